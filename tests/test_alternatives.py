"""Cheaper versions of a workflow (intent/alternatives.py): each fits, is priced by the planner as
`slurmgov run` would hold it, and says what it gives up; when nothing fits, by how much."""

from pathlib import Path

import pytest

from slurmgov.intent import alternatives, jobspec, planner
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile

ROOT = Path(__file__).resolve().parents[1]


def _data(text: str) -> dict:
    return yamlfile.load_text(text, "t.yaml").data


def _cheaper(text: str, site, share: float):
    data = _data(text)
    base = planner.plan(jobspec.loads(text), site)
    return base, *alternatives.cheaper(data, site, base, base.cost_h * share)


def test_a_dear_gpu_type_is_offered_on_the_type_the_site_weighs_less():
    site = site_mod.load(ROOT / "site_configs" / "large-fat-tree.yaml")
    text = ("workflow: w\naccount: chem-ai\npartition: h200\nsteps:\n"
            "  - {id: big, run: 'true', resources: {gpus: 8, gpu_type: h200, time: '02:00:00'}}\n")
    base, found, _ = _cheaper(text, site, 0.9)
    (alt,) = [a for a in found if a.kind == "gpu-type"]
    assert alt.data["steps"][0]["resources"]["gpu_type"] == "h100" and "h100 (weight 1" in alt.gives_up
    assert alt.data["partition"] == "h100" and "partition h100" in alt.gives_up  # where the h100s are
    assert alt.cost_h == pytest.approx(base.cost_h / 1.4) == pytest.approx(alternatives.price(alt.data, site).cost_h)


def test_fewer_branches_drops_a_branch_with_what_only_it_feeds_and_keeps_the_fan_in():
    site = site_mod.load(ROOT / "site_configs" / "local.yaml")
    text = ("workflow: w\naccount: chem-ai\nsteps:\n"
            "  - {id: a, run: 'true', resources: {gpus: 1, time: '01:00:00'}}\n"
            "  - {id: b, run: 'true', resources: {gpus: 1, time: '01:00:00'}}\n"
            "  - {id: b-notes, run: 'true', after: [b]}\n"
            "  - {id: join, run: 'true', after: [a, b-notes]}\n")
    base, found, _ = _cheaper(text, site, 0.6)
    (alt,) = [x for x in found if x.kind == "fewer-branches"]
    assert [s["id"] for s in alt.data["steps"]] == ["a", "join"] and alt.data["steps"][1]["after"] == ["a"]
    assert alt.gives_up == "1 of 2 parallel branches: b, b-notes not run"
    assert alt.cost_h <= base.cost_h * 0.6


def test_a_multi_gpu_context_step_is_offered_on_fewer_gpus_with_a_smaller_context_or_model():
    site = site_mod.load(ROOT / "site_configs" / "local.yaml")
    text = ("workflow: w\naccount: chem-ai\nsteps:\n"
            "  - {id: gen, run: 'true', resources: {gpus: 4, time: '01:00:00'},\n"
            "     context: {model: llama-3-70b, tokens: 32768, sequences: 4}}\n")
    base, found, _ = _cheaper(text, site, 0.6)
    (alt,) = [x for x in found if x.kind == "smaller-context"]
    assert alt.data["steps"][0]["resources"]["gpus"] < 4 and alt.gives_up.startswith("step gen on ")
    assert alt.cost_h == pytest.approx(alternatives.price(alt.data, site).cost_h) and alt.cost_h <= base.cost_h * 0.6


def test_nothing_fits_says_what_the_cheapest_change_would_still_need():
    site = site_mod.load(ROOT / "site_configs" / "local.yaml")
    text = "workflow: w\naccount: chem-ai\nsteps:\n  - {id: a, run: 'true', resources: {gpus: 1, time: '01:00:00'}}\n"
    base, found, cheapest = _cheaper(text, site, 0.01)
    assert found == [] and cheapest is not None and base.cost_h * 0.01 < cheapest < base.cost_h
