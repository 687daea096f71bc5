"""Property tests: whatever a user throws at the config loader, it accepts it or says what is wrong
in one line (KdzooError), never a raw traceback."""

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdzoo.config import RunConfig, load_config
from kdzoo.errors import KdzooError
from kdzoo_plugins.fitnets import FitNetsConfig
from kdzoo_plugins.kd import KDConfig

CLASSES = {"kd": KDConfig, "fitnets": FitNetsConfig}
KEYS = [
    "teacher",
    "student",
    "data",
    "optim",
    "train",
    "kd",
    "fitnets",
    "methods",
    "model",
    "lr",
    "epochs",
    "schedule",
    "img_size",
    "batch_size",
    "name",
    "kwargs",
    "temperature",
    "weight_decay",
    "x",
]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
dotted = st.lists(st.sampled_from(KEYS), min_size=0, max_size=3).map(".".join)
overrides = st.tuples(dotted, st.sampled_from(["=", "", "==", "=="]), st.text(max_size=12)).map("".join)


def _load(files, sets, methods):
    try:
        config = load_config(files, sets, methods, CLASSES)
    except KdzooError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None
    assert isinstance(config, RunConfig) and config.methods
    return config


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents, methods=st.lists(st.sampled_from(["kd", "fitnets", "kdd", ""]), max_size=2))
@example(document={"methods": 1}, methods=[])  # once a TypeError
@example(document={"methods": [1, None]}, methods=[])
def test_random_config_files(tmp_path, document, methods):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    _load([path], [], methods)


@settings(max_examples=200, deadline=None)
@given(sets=st.lists(overrides, max_size=4), methods=st.lists(st.sampled_from(["kd", "fitnets"]), max_size=2))
def test_random_set_strings(sets, methods):
    _load([], sets, methods)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_random_yaml_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _load([path], [], ["kd"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fanouts=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    section=st.sampled_from(["student: {kwargs: ", "optim: {milestones: ", "kd: {temperature: ", "x: {y: "]),
)
@example(fanouts=[9] * 9, section="student: {kwargs: ")  # ~600 bytes, 9^9 values once expanded
def test_alias_chains_are_accepted_small_or_refused_unexpanded(tmp_path, fanouts, section):
    """Each anchor reuses the previous one ``fanout`` times: a small expansion loads, a large one is one
    line, and neither costs more than the text it was written in (nothing is expanded to find out)."""
    import time

    anchors = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * n)}]" for i, n in enumerate(fanouts, 1)]
    path = tmp_path / "c.yaml"
    path.write_text(section + "{" + ", ".join(anchors) + "}}\n")
    start = time.perf_counter()
    _load([path], [], ["kd"])
    assert time.perf_counter() - start < 2.0
