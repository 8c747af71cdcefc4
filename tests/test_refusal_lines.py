"""Every refusal names the file and line it is about, through the CLI a user runs: site files
(exit 2), steps that can never be placed (exit 3), a jobspec's partition and account (exit 2).

Each input marks the line the refusal must name with a trailing ``# <-``; the test finds it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slurmgov.interface.cli import main

ROOT = Path(__file__).resolve().parents[1]
FANOUT = ROOT / "jobspecs" / "research-fanout.yaml"


def slurmgov(capsys, *args) -> tuple[int, str]:
    """Run the CLI in this process as its entry point does; (exit code, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def marked(tmp_path: Path, name: str, text: str) -> tuple[Path, int]:
    """Write ``text``; return its path and the line marked ``# <-``."""
    path = tmp_path / name
    path.write_text(text)
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if t.endswith("# <-")]
    return path, line


SITE_HEAD = """\
# a site file as an admin writes it
site: s
gpu_types: {h100: {memory_gb: 80}}
nodes:
  - {names: "n[1-4]", gpus: 4, gpu_type: h100}
"""
PARTITION = "partitions:\n  - {name: p, nodes: 'n[1-4]'}\n"
LEAVES = "switches:\n  - {name: l1, nodes: 'n[1-2]'}\n  - {name: l2, nodes: 'n[3-4]'}\n"


@pytest.mark.parametrize("body,error", [
    (LEAVES + "  - {name: s1, switches: 'l1,s2'}  # <-\n  - {name: s2, switches: 's1,l2'}\n" + PARTITION,
     "switches[s1]: switches: cycle: s1 -> s2 -> s1"),
    # the cycle is reported where the file first names one of its switches, not where the search met it
    (LEAVES + "  - {name: top, switches: b}\n  - {name: a, switches: 'l1,b'}  # <-\n  - {name: b, switches: a}\n"
     + PARTITION, "switches[a]: switches: cycle: a -> b -> a"),
    (LEAVES + "  - {name: s1, switches: 'l1,s1'}  # <-\n" + PARTITION,
     "switches[s1]: switches: switch s1 lists itself as a child"),
    (LEAVES + "  - {name: s1, switches: 'l1,l9'}  # <-\n" + PARTITION,
     "switches[s1]: switches: unknown child switch l9"),
    ("switches:\n  - {name: l1, nodes: 'n[1-2]'}\n  - {name: l2, nodes: 'n[2-3]'}  # <-\n" + PARTITION,
     "switches[l2]: nodes: node n2 is already under leaf switch l1; a node has one leaf switch"),
    ("switches:\n  - {name: l1, nodes: 'n[1-2]'}\n  - {name: l9, nodes: 'zz[1-2]'}  # <-\n" + PARTITION,
     "switches[l9]: nodes: unknown node zz1"),
    (LEAVES + "  - {name: l1, switches: l2}  # <-\n" + PARTITION, "switches[l1]: name: duplicate switch name 'l1'"),
    ("nvlink_domains:\n  - {name: d1, nodes: 'n[1-2]'}\n  - {name: d2, nodes: 'n[2-3]'}  # <-\n" + PARTITION,
     "nvlink_domains[d2]: nodes: node n2 is already in NVLink domain d1"),
    ("partitions:\n  - name: p\n    nodes: 'n[1-4]'\n    default_time: '2:00:00'  # <-\n    max_time: '1:00:00'\n",
     "partitions[p]: default_time: 02:00:00 is longer than max_time 01:00:00"),
    # without default_time a step gets one hour: a shorter max_time would refuse every such step
    ("partitions:\n  - {name: p, nodes: 'n[1-4]', max_time: '00:30:00'}  # <-\n",
     "partitions[p]: max_time: 00:30:00 is shorter than the default time limit 01:00:00; set default_time"),
    ("partitions:\n  - {name: p, nodes: 'n[1-4]'}\n  - {name: q, nodes: 'n[1-5]'}  # <-\n",
     "partitions[q]: nodes: unknown node n5"),
    ("partitions:\n  - {name: p, nodes: 'n[1-4]', default: true}\n  - {name: q, nodes: n1, default: true}  # <-\n",
     "partitions[q]: default: more than one partition is marked default (p already is)"),
    ("partitions: []  # <-\n", "partitions: a site needs at least one partition (the Slurm partition its jobs go to)"),
], ids=["cycle", "cycle-reported-where-first-named", "own-child", "unknown-child", "node-under-two-leaves", "unknown-node-in-switch", "duplicate-switch", "node-in-two-domains", "default-over-max", "max-under-implicit-default", "unknown-node-in-partition", "two-defaults", "empty-partitions"])
def test_site_file_refusals_name_the_offending_line(tmp_path, capsys, body, error):
    site, line = marked(tmp_path, "site.yaml", SITE_HEAD + body)
    code, err = slurmgov(capsys, "plan", FANOUT, "--site", site)
    assert (code, err) == (2, f"slurmgov: {site}:{line}: {error}\n")


def test_a_site_without_partitions_is_refused(tmp_path, capsys):
    site = tmp_path / "site.yaml"
    site.write_text(SITE_HEAD)
    code, err = slurmgov(capsys, "plan", FANOUT, "--site", site)
    # no line holds the missing key: the refusal points at the document's first line
    assert (code, err) == (2, (f"slurmgov: {site}:2: partitions: a site needs at least one partition "
                              f"(the Slurm partition its jobs go to)\n"))


def test_an_unknown_gpu_type_names_the_node_group(tmp_path, capsys):
    text = SITE_HEAD + "  - {names: x1, gpus: 2, gpu_type: a100}  # <-\n" + PARTITION
    site, line = marked(tmp_path, "site.yaml", text)
    code, err = slurmgov(capsys, "plan", FANOUT, "--site", site)
    assert (code, err) == (2, f"slurmgov: {site}:{line}: nodes[x1]: gpu_type: 'a100' is not in gpu_types\n")


DEMO = ROOT / "site_configs" / "demo-cluster.yaml"


@pytest.mark.parametrize("step,error", [
    ("{id: big, run: x, resources: {gpus: 8}}",
     "step 'big': needs 8 GPUs on one node; the largest h100 node in partition gpu has 4; spread it with nodes: 2"),
    ("{id: long, run: x, resources: {gpus: 1, time: 3-00:00:00}}",
     "step 'long': time limit 3-00:00:00 exceeds partition gpu's maximum 1-00:00:00"),
    ("{id: a100, run: x, resources: {gpus: 1, gpu_type: a100}}", "step 'a100': no a100 GPUs in partition gpu (it has: h100)"),
    ("{id: cpu2, run: x, resources: {nodes: 2}}",
     "step 'cpu2': a step without GPUs runs on the submitting host; it cannot span 2 nodes"),
], ids=["gpus-per-node", "time-limit", "gpu-type", "cpu-step-on-two-nodes"])
def test_placement_refusals_name_the_steps_line(tmp_path, capsys, step, error):
    text = ("# refused steps\nworkflow: w\naccount: chem-ai\nsteps:\n"
            "  - {id: fine, run: x, resources: {gpus: 1}}\n"
            f"  - {step}  # <-\n"
            "  - {id: after, run: x, after: [fine]}\n")
    spec, line = marked(tmp_path, "w.yaml", text)
    code, err = slurmgov(capsys, "plan", spec, "--site", DEMO)
    assert (code, err) == (3, f"slurmgov: {spec}:{line}: {error}\n")


def test_a_refused_step_in_block_style_names_its_first_line(tmp_path, capsys):
    text = ("workflow: w\naccount: chem-ai\nsteps:\n  - id: fine\n    run: x\n"
            "  - id: big  # <-\n    run: x\n    resources:\n      gpus: 8\n")
    spec, line = marked(tmp_path, "w.yaml", text)
    code, err = slurmgov(capsys, "plan", spec, "--site", DEMO)
    assert code == 3 and err.startswith(f"slurmgov: {spec}:{line}: step 'big': needs 8 GPUs on one node")


def test_an_unknown_partition_names_the_jobspecs_partition_line(tmp_path, capsys):
    text = "workflow: w\naccount: chem-ai\npartition: nope  # <-\nsteps:\n  - {id: a, run: x}\n"
    spec, line = marked(tmp_path, "w.yaml", text)
    code, err = slurmgov(capsys, "plan", spec, "--site", DEMO)
    assert (code, err) == (2, (f"slurmgov: {spec}:{line}: partition: site demo-cluster: no partition 'nope' "
                              f"(have: gpu, nolimit)\n"))


def test_an_unknown_account_names_the_jobspecs_account_line(tmp_path, capsys):
    text = "# a typo in the account\nworkflow: w\naccount: chem-aj  # <-\nsteps:\n  - {id: a, run: 'true'}\n"
    spec, line = marked(tmp_path, "w.yaml", text)
    code, err = slurmgov(capsys, "run", spec, "--site", ROOT / "site_configs" / "local.yaml")
    assert (code, err) == (2, (f"slurmgov: {spec}:{line}: account: chem-aj has no budget in the ledger and site "
                              f"local does not list it; set one with `slurmgov budget set chem-aj GPU_HOURS`\n"))


@pytest.mark.parametrize("site", sorted((ROOT / "site_configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_site_plans_every_shipped_jobspec(capsys, site):
    specs = sorted((ROOT / "jobspecs").glob("*.yaml"))
    assert specs
    for spec in specs:
        assert slurmgov(capsys, "plan", spec, "--site", site, "--json") == (0, ""), spec.name
