"""The CRD paper's CIFAR architectures, registered into timm by a plugin, with the published sizes."""

import pytest
import timm
import torch

import kdzoo  # noqa: F401  (loads the plugins, which register the models)
from kdzoo import KdzooError
from kdzoo.api import Batch, When
from kdzoo.config import load_config
from kdzoo.engine.extract import FeatureExtractor, describe
from kdzoo.registry import registry

PUBLISHED_M_PARAMS = {  # RepDistiller's definitions, 100 classes
    "resnet8x4": 1.234,
    "resnet32x4": 7.434,
    "wrn_16_2": 0.703,
    "wrn_40_2": 2.255,
    "resnet20": 0.278,
    "resnet56": 0.862,
    "resnet110": 1.737,
    "wrn_40_1": 0.570,
    "vgg8": 3.965,
    "vgg13_cifar": 9.462,
    "mobilenetv2_half_cifar": 0.813,
    "shufflenet_v1_cifar": 0.949,
    "shufflenet_v2_cifar": 1.356,
}


@pytest.mark.parametrize("name", list(PUBLISHED_M_PARAMS))
def test_created_by_timm_with_the_published_parameter_count(name):
    model = timm.create_model(name, num_classes=100)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == PUBLISHED_M_PARAMS[name]
    info = describe(model, name, 32)
    x = torch.randn(2, 3, 32, 32)
    out = FeatureExtractor(model.eval(), info, range(len(info.stages)), embedding=True)(x)
    for i, stage in enumerate(info.stages):
        assert out.feature(i).shape == (2, stage.channels, info.spatial_size(i), info.spatial_size(i))
    assert torch.allclose(out.logits, model(x), atol=1e-5) and out.embedding.shape == (2, info.embedding_dim)


def test_pretrained_weights_do_not_exist_and_say_so():
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("resnet8x4", pretrained=True)


@pytest.mark.parametrize(
    "config", ["resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "resnet32x4_shufflenet_v2_cifar"]
)
def test_paper_setting_configs_build_and_take_one_step_on_cpu(config, tmp_path):
    from kdzoo.data import DataBundle, TensorBatches
    from kdzoo.engine import build_trainer

    reg = registry()
    cfg = load_config(
        [f"configs/cifar100/{config}.yaml"],
        [f"train.out_dir={tmp_path}", "train.device=cpu"],
        ["kd", "fitnets"],
        reg.config_classes(),
    )
    assert cfg.optim.milestones == [150, 180, 210] and cfg.train.epochs == 240 and cfg.data.batch_size == 64
    assert cfg.method_configs["kd"].temperature == 4.0
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 100, (8,))
    norm = __import__("kdzoo.data", fromlist=["Normalisation"]).Normalisation((0.5,) * 3, (0.25,) * 3)
    batches = TensorBatches(x, y, 8, 32, norm, train=True)
    data = DataBundle("cifar100-sample", batches, batches, 100, 3)
    teacher = timm.create_model(cfg.teacher.model, num_classes=100)
    trainer = build_trainer(cfg, reg, tmp_path / "run", teacher=teacher, data=data, show_progress=False)
    trainer.step.begin(trainer.stages[0])
    result = trainer.step(Batch(*next(batches.epoch(0))), When(trainer.stages[0]))
    loss, terms = result.loss, result.terms
    assert torch.isfinite(loss) and {"ce", "kd", "hint"} <= set(terms)


def test_the_paper_setting_config_runs_every_built_in_method(tmp_path):
    """One step of each built-in method on the CRD table's pair and its CIFAR-100 config."""
    from kdzoo.data import DataBundle, Normalisation, TensorBatches
    from kdzoo.engine import build_trainer

    reg = registry()
    builtin = sorted(name for name, info in reg.methods.items() if info.distribution == "kdzoo")
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 100, (8,))
    batches = TensorBatches(x, y, 8, 32, Normalisation((0.5,) * 3, (0.25,) * 3), train=True)
    data = DataBundle("cifar100-sample", batches, batches, 100, 3)
    teacher = timm.create_model("resnet32x4", num_classes=100)
    # Born-Again's generations get their teacher at a stage boundary; BYOT has terms from the first step
    variants = {"self-distill": ["self-distill.variant=byot"]}
    refused = {}
    for method in builtin:
        sets = [f"train.out_dir={tmp_path}", "train.device=cpu", *variants.get(method, [])]
        cfg = load_config(["configs/cifar100/resnet32x4_resnet8x4.yaml"], sets, [method], reg.config_classes())
        try:
            trainer = build_trainer(cfg, reg, tmp_path / method, teacher=teacher, data=data, show_progress=False)
        except KdzooError as e:  # a method that cannot apply to a CNN student says so in one line
            refused[method] = str(e)
            continue
        stage = next(s for s in trainer.stages if s.losses is None or s.losses - {"ce"})  # a distilling stage
        trainer.step.begin(stage)
        x, y, idx = next(batches.epoch(0, with_index=True))  # CRD's memory bank is indexed by sample
        result = trainer.step(Batch(x, y, idx), When(stage))
        loss, terms = result.loss, result.terms
        assert torch.isfinite(loss) and set(terms) - {"ce"}, (method, terms)
    assert "\n" not in refused["deit"] and "resnet8x4 has none" in refused["deit"]
    several = {m for m in builtin if reg.methods[m].min_teachers > 1}  # one teacher here: refused, saying so
    assert set(refused) == {"deit"} | several and all("list them under teachers:" in refused[m] for m in several)
