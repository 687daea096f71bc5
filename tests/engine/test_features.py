"""Model description and the one-forward extractor (``kdzoo.engine.extract``), pre-activation taps,
stage pairing (``kdzoo.api``), teacher runs."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from torch import nn

from kdzoo.api import ModelInfo, StageInfo, pair_stage, parameters_up_to
from kdzoo.engine.extract import FeatureExtractor, describe, run_teacher
from kdzoo.errors import KdzooError
from tests.helpers import seeded

IMG = 32
MODELS = {
    "test_resnet": {},
    "resnet10t": {},
    "mobilenetv3_small_050": {},
    "test_vit": {"img_size": IMG, "patch_size": 4},
    "test_efficientnet": {},
}


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, in_chans=3, **MODELS.get(name, {})).eval()


@pytest.fixture
def model_factory():
    """Cached tiny timm models in eval mode (never mutate them in place: wrap or monkeypatch)."""
    return _model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(MODELS))
def test_describe_reads_feature_info(name, model_factory):
    model = model_factory(name)
    info = describe(model, name, IMG)
    assert info.name == name
    assert info.img_size == IMG
    assert info.num_classes == 10
    assert len(info.stages) == len(model.feature_info) > 0
    assert [s.channels for s in info.stages] == [f["num_chs"] for f in model.feature_info]
    assert [s.reduction for s in info.stages] == [f["reduction"] for f in model.feature_info]
    assert [s.module for s in info.stages] == [f["module"] for f in model.feature_info]
    assert [s.index for s in info.stages] == list(range(len(info.stages)))
    assert info.embedding_dim == model.get_classifier().in_features
    assert info.relative_depth(0) == 0.0 and info.relative_depth(len(info.stages) - 1) == 1.0


def test_model_info_stage_out_of_range():
    info = describe(_model("test_resnet"), "test_resnet", IMG)
    assert info.stage(-1) is info.stages[-1]
    with pytest.raises(KdzooError) as err:
        info.stage(5)
    assert "test_resnet" in str(err.value) and "5" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("embedding", [False, True])
def test_feature_extractor_shapes_and_logits(name, embedding, model_factory, x):
    model = model_factory(name)
    info = describe(model, name, IMG)
    n = len(info.stages)
    taps = sorted({0, n // 2, n - 1})
    extractor = FeatureExtractor(model, info, taps, embedding=embedding)
    assert extractor.native
    with torch.no_grad():
        out = extractor(x)
        reference = model(x)
    assert sorted(out.features) == taps
    for i in taps:
        side = info.spatial_size(i)
        assert tuple(out.feature(i).shape) == (2, info.stages[i].channels, side, side), (name, i)
    assert out.logits.shape == (2, 10)
    assert torch.allclose(out.logits, reference, atol=1e-5)
    if embedding:
        assert out.embedding is not None
        assert out.embedding.shape == (2, info.embedding_dim)
        assert torch.allclose(model.get_classifier()(out.embedding), out.logits, atol=1e-5)
    else:
        assert out.embedding is None


def test_feature_extractor_untapped_feature_is_error(x):
    model = _model("test_resnet")
    extractor = FeatureExtractor(model, describe(model, "test_resnet", IMG), [1], embedding=False)
    with torch.no_grad():
        out = extractor(x)
    with pytest.raises(KdzooError) as err:
        out.feature(2)
    assert "kdzoo_feature_taps" in str(err.value)


def test_feature_extractor_negative_index_normalised(x):
    model = _model("test_efficientnet")
    info = describe(model, "test_efficientnet", IMG)
    extractor = FeatureExtractor(model, info, [-1], embedding=False)
    assert extractor.indices == [len(info.stages) - 1]
    with torch.no_grad():
        out = extractor(x)
    assert out.feature(len(info.stages) - 1).shape[1] == info.stages[-1].channels


def test_feature_extractor_rejects_out_of_range_index():
    model = _model("test_resnet")
    with pytest.raises(KdzooError):
        FeatureExtractor(model, describe(model, "test_resnet", IMG), [5], embedding=False)


# --------------------------------------------------------------------------- one forward per call


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *_args):
        self.calls += 1


def _count(obj, attr: str, monkeypatch) -> _Counter:
    counter = _Counter()
    original = getattr(obj, attr)

    def wrapped(*args, **kwargs):
        counter()
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, attr, wrapped)
    return counter


@pytest.mark.parametrize(("name", "stem"), [("test_resnet", "conv1"), ("test_vit", "patch_embed")])
@pytest.mark.parametrize("embedding", [False, True])
def test_forward_runs_once(name, stem, embedding, monkeypatch, x):
    model = _model(name)
    info = describe(model, name, IMG)
    intermediates = _count(model, "forward_intermediates", monkeypatch)
    features = _count(model, "forward_features", monkeypatch)
    head = _count(model, "forward_head", monkeypatch)
    stem_runs = _Counter()
    handle = model.get_submodule(stem).register_forward_hook(stem_runs)
    try:
        extractor = FeatureExtractor(model, info, [1, 2], embedding=embedding)
        with torch.no_grad():
            extractor(x)
        assert intermediates.calls == 1
        assert features.calls == 0
        assert head.calls == 1
        assert stem_runs.calls == 1  # the trunk ran exactly once

        extractor = FeatureExtractor(model, info, [], embedding=embedding)
        with torch.no_grad():
            out = extractor(x)
        assert out.features == {}
        assert intermediates.calls == 1 and features.calls == 1 and head.calls == 2
        assert stem_runs.calls == 2
    finally:
        handle.remove()


# --------------------------------------------------------------------------- hook fallback


class NoIntermediates(nn.Module):
    """A timm model seen through an interface without ``forward_intermediates``.

    The wrapped model's children are registered under their own names so ``feature_info`` module
    paths resolve here, and the weights are the very same tensors.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        for child_name, child in inner.named_children():
            self.add_module(child_name, child)
        self._inner = (inner,)  # a tuple: not registered a second time
        self.feature_info = inner.feature_info
        self.num_classes = inner.num_classes
        self.num_features = inner.num_features

    def forward_features(self, x):
        return self._inner[0].forward_features(x)

    def forward_head(self, x, pre_logits: bool = False):
        return self._inner[0].forward_head(x, pre_logits=pre_logits)

    def get_classifier(self):
        return self._inner[0].get_classifier()

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class LogitsOnly(nn.Module):
    """No forward_features/forward_head at all: features come from hooks, logits from forward."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
        self.feature_info = [{"num_chs": 4, "reduction": 2, "module": "body"}]
        self.num_classes = 10

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("name", ["test_resnet", "mobilenetv3_small_050", "test_efficientnet"])
@pytest.mark.parametrize("embedding", [False, True])
def test_hook_fallback_matches_native(name, embedding, x):
    model = _model(name)
    wrapped = NoIntermediates(model).eval()
    assert not hasattr(wrapped, "forward_intermediates")
    info = describe(model, name, IMG)
    assert describe(wrapped, name, IMG).stages == info.stages
    taps = list(range(len(info.stages)))
    native = FeatureExtractor(model, info, taps, embedding=embedding)
    hooked = FeatureExtractor(wrapped, info, taps, embedding=embedding)
    assert native.native and not hooked.native
    try:
        with torch.no_grad():
            a, b = native(x), hooked(x)
            second = hooked(x)
    finally:
        hooked.close()
    assert sorted(b.features) == taps
    for i in taps:
        assert b.features[i].shape == a.features[i].shape
        assert torch.allclose(a.features[i], b.features[i], atol=1e-6), (name, i)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    if embedding:
        assert torch.allclose(a.embedding, b.embedding, atol=1e-6)
    # A second call gets fresh features, not the first call's leftovers accumulating.
    assert sorted(second.features) == taps
    # close() removes the hooks: the wrapped model no longer feeds the extractor.
    with torch.no_grad():
        wrapped(x)
    assert hooked._hooked == {}


def test_hook_fallback_runs_forward_once(x, monkeypatch):
    model = _model("test_resnet")
    wrapped = NoIntermediates(model).eval()
    info = describe(model, "test_resnet", IMG)
    calls = _count(wrapped, "forward_features", monkeypatch)
    stem_runs = _Counter()
    handle = wrapped.conv1.register_forward_hook(stem_runs)
    extractor = FeatureExtractor(wrapped, info, [0, 2, 4], embedding=True)
    try:
        with torch.no_grad():
            extractor(x)
    finally:
        extractor.close()
        handle.remove()
    assert calls.calls == 1
    assert stem_runs.calls == 1


def test_hook_fallback_without_head(x):
    torch.manual_seed(0)
    model = LogitsOnly().eval()
    info = describe(model, "logits_only", IMG)
    assert info.stages == (StageInfo(0, 4, 2, "body"),)
    extractor = FeatureExtractor(model, info, [0], embedding=False)
    with torch.no_grad():
        out = extractor(x)
        reference = model(x)
    assert out.features[0].shape == (2, 4, 16, 16)
    assert torch.allclose(out.logits, reference)
    assert torch.allclose(out.features[0], model.body(x))
    with pytest.raises(KdzooError) as err:
        with torch.no_grad():
            FeatureExtractor(model, info, [0], embedding=True)(x)
    assert "forward_head" in str(err.value)


def test_hook_fallback_missing_module_is_error():
    model = LogitsOnly()
    info = ModelInfo("broken", (StageInfo(0, 4, 2, "nowhere"),), 10, 0, IMG)
    with pytest.raises(KdzooError) as err:
        FeatureExtractor(model, info, [0], embedding=False)
    assert "nowhere" in str(err.value)


# --------------------------------------------------------------------------- pair_stage


def test_pair_stage_same_layout():
    teacher = describe(_model("resnet10t"), "resnet10t", IMG)
    student = describe(_model("mobilenetv3_small_050"), "mobilenetv3_small_050", IMG)
    assert pair_stage(teacher, student, 2) == 2
    assert pair_stage(teacher, student, 0) == 0
    assert pair_stage(teacher, student, -1) == 4


def test_pair_stage_resnet18_teacher_mobilenet_student():
    # resnet18's feature_info, as timm describes it (read without building the 11M-param model).
    teacher = ModelInfo(
        "resnet18",
        tuple(
            StageInfo(i, c, r, m)
            for i, (c, r, m) in enumerate(
                [(64, 2, "act1"), (64, 4, "layer1"), (128, 8, "layer2"), (256, 16, "layer3"), (512, 32, "layer4")]
            )
        ),
        10,
        512,
        IMG,
    )
    student = describe(_model("mobilenetv3_small_050"), "mobilenetv3_small_050", IMG)
    assert pair_stage(teacher, student, 2) == 2
    assert teacher.stages[2].reduction == student.stages[2].reduction


def test_pair_stage_vit_teacher_resnet_student():
    teacher = describe(_model("test_vit"), "test_vit", IMG)
    student = describe(_model("test_resnet"), "test_resnet", IMG)
    assert len(teacher.stages) == 6 and len(student.stages) == 5
    assert pair_stage(teacher, student, 2) in (2, 3)
    assert pair_stage(teacher, student, 0) == 0
    assert pair_stage(teacher, student, 4) == 5


def _info(name: str, reductions: list[int]) -> ModelInfo:
    return ModelInfo(name, tuple(StageInfo(i, 8, r, f"s{i}") for i, r in enumerate(reductions)), 10, 8, IMG)


def test_pair_stage_depth_tie_broken_by_reduction():
    # Six teacher stages: 2 and 3 sit at relative depth 0.4 and 0.6, equally far from 0.5.
    student = _info("student", [2, 4, 8, 16, 32])
    assert pair_stage(_info("t_a", [2, 4, 4, 8, 16, 32]), student, 2) == 3  # stage 3 has stride 8
    assert pair_stage(_info("t_b", [2, 4, 8, 16, 16, 32]), student, 2) == 2  # stage 2 has stride 8


def test_pair_stage_depth_before_reduction():
    # Depth wins over stride: the depth-matched stage is chosen even with a different stride.
    student = _info("student", [2, 4, 8])
    teacher = _info("teacher", [8, 16, 32])
    assert pair_stage(teacher, student, 0) == 0
    assert pair_stage(teacher, student, 1) == 1


def test_pair_stage_errors():
    student = _info("student", [2, 4, 8])
    with pytest.raises(KdzooError):
        pair_stage(_info("empty", []), student, 1)
    with pytest.raises(KdzooError):
        pair_stage(_info("teacher", [2, 4, 8]), student, 3)


# --------------------------------------------------------------------------- run_teacher


def test_run_teacher_outputs_are_normal_tensors(x):
    teacher = _model("test_resnet")
    t_info = describe(teacher, "test_resnet", IMG)
    student = _model("test_efficientnet")
    s_info = describe(student, "test_efficientnet", IMG)
    t_out = run_teacher(FeatureExtractor(teacher, t_info, [2], embedding=True), x)
    assert not t_out.logits.is_inference()
    assert not t_out.features[2].is_inference()
    assert not t_out.embedding.is_inference()
    assert not t_out.logits.requires_grad and not t_out.features[2].requires_grad

    s_out = FeatureExtractor(student, s_info, [2], embedding=False)(x)
    assert s_out.logits.requires_grad
    # A loss mixing teacher and student tensors back-propagates into the student only.
    student.zero_grad(set_to_none=True)
    teacher.zero_grad(set_to_none=True)
    s_feat = s_out.features[2].mean(dim=1, keepdim=True)
    t_feat = t_out.features[2].mean(dim=1, keepdim=True)
    loss = (s_out.logits - t_out.logits).pow(2).mean() + (s_feat - t_feat).pow(2).mean()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad(set_to_none=True)


def test_run_teacher_matches_model_and_none():
    assert run_teacher(None, torch.zeros(1)) is None
    teacher = _model("test_resnet")
    x = torch.randn(2, 3, IMG, IMG)
    out = run_teacher(FeatureExtractor(teacher, describe(teacher, "test_resnet", IMG), [], embedding=False), x)
    with torch.no_grad():
        assert torch.allclose(out.logits, teacher(x), atol=1e-5)


# --------------------------------------------------------------------------- parameters_up_to


def test_parameters_up_to_layer2():
    model = _model("test_resnet")
    chosen = {id(p) for p in parameters_up_to(model, "layer2")}
    named = dict(model.named_parameters())
    prefixes_in = ("conv1.", "bn1.", "layer1.", "layer2.")
    prefixes_out = ("layer3.", "layer4.", "fc.")
    expected = {id(p) for n, p in named.items() if n.startswith(prefixes_in)}
    assert expected, "test_resnet has parameters in conv1/bn1/layer1/layer2"
    assert chosen == expected
    for n, p in named.items():
        if n.startswith(prefixes_out):
            assert id(p) not in chosen, n
    assert any(n.startswith("layer2.") for n, p in named.items() if id(p) in chosen)
    assert len(parameters_up_to(model, "layer2")) == len(expected)  # no duplicates


def test_parameters_up_to_nested_path_and_unknown():
    model = _model("test_resnet")
    chosen = {id(p) for p in parameters_up_to(model, "layer1")}
    named = dict(model.named_parameters())
    assert all(id(named[n]) in chosen for n in named if n.startswith("layer1."))
    assert not any(id(named[n]) in chosen for n in named if n.startswith("layer2."))
    with pytest.raises(ValueError):
        parameters_up_to(model, "layer9")


def test_hook_fallback_turns_transformer_tokens_into_nchw_maps():
    vit = timm.create_model("test_vit", num_classes=10, img_size=32, patch_size=4)

    class NoIntermediates(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.feature_info = [dict(f, module=f"inner.{f['module']}") for f in inner.feature_info]
            self.num_classes, self.num_prefix_tokens = inner.num_classes, inner.num_prefix_tokens

        def forward_features(self, x):
            return self.inner.forward_features(x)

        def forward_head(self, x, pre_logits=False):
            return self.inner.forward_head(x, pre_logits=pre_logits)

    wrapped = NoIntermediates(vit).eval()
    x = torch.randn(2, 3, 32, 32)
    hooked = FeatureExtractor(wrapped, describe(wrapped, "wrapped", 32), [2], embedding=False)(x)
    native = FeatureExtractor(vit.eval(), describe(vit, "test_vit", 32), [2], embedding=False)(x)
    assert hooked.feature(2).shape == (2, 64, 8, 8)
    assert torch.allclose(hooked.feature(2), native.feature(2), atol=1e-6)


def test_a_teacher_summary_replaces_its_map_unless_the_map_is_tapped_whole(model_factory, x):
    from kdzoo.api import Summary

    model = model_factory("test_resnet")
    info = describe(model, "test_resnet", IMG)
    channel_mean = Summary("mean_c", 1, lambda f: f.mean(dim=1, keepdim=True))
    with torch.no_grad():
        whole = FeatureExtractor(model, info, [1, 2], embedding=False)(x)
        summarised = FeatureExtractor(model, info, [2], embedding=False, summaries=[channel_mean])(x)
    assert sorted(summarised.features) == [2]  # stage 1 is summarised only: its map is not kept
    assert torch.allclose(summarised.summary("mean_c", 1), whole.feature(1).mean(dim=1, keepdim=True))
    assert torch.allclose(summarised.logits, whole.logits)
    with pytest.raises(KdzooError, match="summary 'other' of stage 1 was not computed"):
        summarised.summary("other", 1)


def test_taps_union_keeps_one_summary_per_name_and_stage():
    from kdzoo.api import Summary, Taps

    a = Taps(teacher_summaries=(Summary("s", 1, abs), Summary("s", 2, abs)))
    b = Taps(teacher=(2,), teacher_summaries=(Summary("s", 1, abs),))
    merged = a | b
    assert [s.key for s in merged.teacher_summaries] == ["s@1", "s@2"] and merged.teacher == (2,)


@pytest.mark.parametrize("name, kwargs", [("resnet10t", {}), ("test_vit", {"img_size": 32, "patch_size": 4})])
def test_pre_activation_is_the_input_of_the_stages_last_activation(name, kwargs):
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    info = describe(model, name, 32)
    stages = list(range(len(info.stages)))
    extractor = FeatureExtractor(model, info, stages, False, preact=stages)
    with torch.no_grad():
        out = extractor(torch.randn(2, 3, 32, 32, generator=seeded(0)))
    for i in stages:
        pre, post = out.preact[i], out.features[i]
        if name == "resnet10t":  # every stage ends in a ReLU: post = relu(pre), and pre has negatives
            assert torch.allclose(post, pre.relu()), i
            assert i == 1 or pre.min() < 0, i  # layer1's blocks start with zero-initialised last BNs
        else:  # transformer blocks end in a residual sum: no final activation, the map itself
            assert torch.equal(pre, post), i
    extractor.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_preact_tap_is_a_one_line_error_when_undeclared():
    from kdzoo import KdzooError, Outputs

    with pytest.raises(KdzooError, match="pre-activation map of stage 2 was not tapped"):
        Outputs(torch.zeros(1, 2)).pre_activation(2)
