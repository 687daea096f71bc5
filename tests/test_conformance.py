"""Every built-in method passes the conformance suite plugin authors run (kdzoo.testing)."""

import pytest

from kdzoo.testing import conformance_cases, run_case

CASES = [
    *conformance_cases("kd"),
    *conformance_cases("fitnets"),
    *conformance_cases("fitnets", pairs=["resnet->mobilenetv3"], settings=("schedule=two_stage",)),
    *conformance_cases("at"),
    *conformance_cases("rkd"),
    *conformance_cases("self-distill", pairs=["resnet->resnet"]),
    *conformance_cases("self-distill", pairs=["resnet->mobilenetv3"], settings=("variant=byot",)),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c}{'-' + '-'.join(c.settings) if c.settings else ''}" for c in CASES])
def test_builtin_method_conforms(case, tmp_path):
    run_case(case, tmp_path)
