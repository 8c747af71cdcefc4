"""Live placement and fragmentation records: parsing Slurm's output and reading the log back."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmgov.site import model as site_mod
from slurmgov.slurm import placement as pl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def site():
    return site_mod.load(ROOT / "site_configs" / "demo-cluster.yaml")


def test_busy_gpus_from_sinfo_counts_typed_and_untyped_and_ignores_unknown_nodes(site):
    out = ("gpu01               gpu:h100:2(IDX:0-1)\n"
           "gpu01               gpu:h100:2(IDX:0-1)\n"  # the node is in two partitions: listed twice
           "gpu02               gpu:3(IDX:0-2)\n"
           "gpu03               gpu:h100:0(IDX:N/A)\n"
           "cpu99               gpu:h100:4(IDX:0-3)\n")
    assert pl.busy_gpus(out, set(site.topology.nodes)) == {"gpu01": 2, "gpu02": 3, "gpu03": 0}


def test_running_jobs_read_the_requested_locality_from_the_planners_comment(site):
    doc = {"jobs": [
        {"job_id": 7, "job_state": "RUNNING", "nodes": "gpu[01-02]", "tres_alloc_str": "cpu=2,gres/gpu=8",
         "comment": "slurmgov:wf=ft,alloc=a2,within=leaf-switch"},
        {"job_id": 8, "job_state": "RUNNING", "nodes": "gpu[02-03]", "tres_alloc_str": "gres/gpu=2", "comment": None},
        {"job_id": 9, "job_state": "PENDING", "nodes": "", "tres_alloc_str": "", "comment": None},
        {"job_id": 10, "job_state": "RUNNING", "nodes": "gpu04", "tres_alloc_str": "cpu=1", "comment": None},
    ]}
    assert pl.running_jobs(doc, set(site.topology.nodes)) == [
        ("7", "leaf-switch", ["gpu01", "gpu02"]), ("8", "any", ["gpu02", "gpu03"])]


def test_log_reports_each_job_once_and_survives_a_torn_line(site, tmp_path):
    log = pl.PlacementLog(tmp_path / "placement.jsonl")
    log.append(pl.Sample(100.0, {"gpu01": 4, "gpu02": 4}, [("7", "leaf-switch", ["gpu01", "gpu02"])]))
    log.append(pl.Sample(160.0, {"gpu01": 4, "gpu03": 4}, [("7", "leaf-switch", ["gpu01", "gpu02"]),
                                                          ("8", "leaf-switch", ["gpu01", "gpu03"])]))
    with open(log.path, "a") as fh:
        fh.write('{"t": 200, "busy": {"gpu0')  # a crash mid-write
    samples = log.read()
    assert [s.t for s in samples] == [100.0, 160.0]
    rep = pl.placement(site, samples)
    assert (rep["jobs"], rep["satisfied"]) == (2, 1)
    assert rep["misses"] == [{"job_id": "8", "requested": "leaf-switch", "got": "any", "nodes": "gpu[01,03]"}]
    frag = pl.fragmentation_over_time(site, samples)
    assert frag["samples"] == 2
    assert frag["leaf_switches"]["leaf1"][4] == {"min": 0, "mean": 0.5, "now": 1}
    assert frag["total"][1] == {"min": 8, "mean": 8.0, "now": 8}
    assert [s.t for s in log.read(since=150)] == [160.0]
