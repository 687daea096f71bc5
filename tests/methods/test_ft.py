"""Factor transfer: equal to torchdistill 1.1.5's FTLoss, and the paraphraser pre-trained alone."""

import pytest
import torch
import torchdistill.losses.mid_level as td

from tests.helpers import seeded


def test_factor_transfer_equals_torchdistill_and_pretrains_its_paraphraser_alone(tmp_path):
    from kdzoo.engine import build_trainer
    from kdzoo.losses.ft import factor_loss
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    f_s, f_t = torch.randn(4, 8, 2, 2, generator=seeded(20)), torch.randn(4, 8, 2, 2, generator=seeded(21))
    theirs = td.FTLoss(p=1, reduction="mean")({"translator": {"output": f_s}}, {"paraphraser": {"output": f_t}})
    assert factor_loss(f_s, f_t).item() == pytest.approx(theirs.item(), rel=1e-5)

    cfg = tiny_config(["ft"], "ft.paraphrase_epochs=1", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert [s.name for s in trainer.stages] == ["paraphrase", "train"]
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    paraphraser = trainer.modules["ft"]["paraphraser"]
    after_paraphrase = {}

    class AfterFirstStage:
        @__import__("kdzoo").hookimpl
        def kdzoo_on_stage_end(self, run, index):
            if index == 0:
                after_paraphrase.update({k: v.clone() for k, v in run.student.state_dict().items()})

    trainer.pm.register(AfterFirstStage())
    paraphraser_before = {k: v.clone() for k, v in paraphraser.state_dict().items()}
    trainer.fit()
    weights = [k for k in student_before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(student_before[k], after_paraphrase[k]) for k in weights)  # the student waited
    assert any(not torch.equal(v, paraphraser.state_dict()[k]) for k, v in paraphraser_before.items())
    assert {"ft_reconstruction"} <= set(trainer.history[0]["train"]) and "ft" in trainer.history[1]["train"]
