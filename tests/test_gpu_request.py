"""The Python twin of the submit hook's GPU-request parser and price (pure Python, no Slurm);
tests/data/hook_prices.yaml is the table both are held to."""

import dataclasses

import pytest
from hook_cases import (
    expected_cpu_result,
    expected_result,
    load_cases,
    py_cpu_price,
    py_cpu_result,
    py_price_result,
    subset,
)

from slurmgov.errors import InputError
from slurmgov.slurm.gpu_request import (
    INFINITE,
    GpuRequest,
    HookPartition,
    HookView,
    PriceParams,
    _options,
    hook_price,
    parse_array_size,
    parse_sbatch_args,
    parse_time_min,
    sbatch_job_desc,
    view_from_job_desc,
    worst_case_gpu_seconds,
)


@pytest.mark.parametrize("text,minutes", [
    ("10", 10), ("0:30", 1), ("1:30", 2), ("10:00", 10), ("1:00:00", 60), ("2:03:04", 124),
    ("1-0", 1440), ("2-01", 2940), ("1-01:30", 1530), ("1-00:00:01", 1441), ("90", 90),
])
def test_time_formats_round_up_to_minutes(text, minutes):
    assert parse_time_min(text) == minutes


@pytest.mark.parametrize("text", ["UNLIMITED", "infinite", "-1", "0", "0:00"])
def test_unlimited_time_is_none(text):
    assert parse_time_min(text) is None


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "1-", "-5", "1.5", "1-2-3", "10m"])
def test_bad_time_raises_one_line(text):
    with pytest.raises(InputError) as e:
        parse_time_min(text)
    assert "\n" not in str(e.value) and "--time" in str(e.value)


@pytest.mark.parametrize("spec,n", [
    ("0-9", 10), ("1,3,5", 3), ("0-15:4", 4), ("0-99%10", 100), ("7", 1), ("0-3,2-5", 6),
    ("0-15:4%2", 4), ("5-5", 1),
])
def test_array_sizes(spec, n):
    assert parse_array_size(spec) == n


@pytest.mark.parametrize("spec", ["", "a", "5-2", "0-9:0", "1,,2", "0-9%x", "0-99999999"])
def test_bad_array_raises(spec):
    with pytest.raises(InputError):
        parse_array_size(spec)


def test_gres_typed_and_untyped():
    r = parse_sbatch_args(["--gres=gpu:h100:2", "-t", "10"])
    assert (r.gpus_total, r.gpus_per_node, r.gpu_type, r.nodes, r.time_limit_min) == (2, 2, "h100", 1, 10)
    r = parse_sbatch_args(["--gres", "gpu:3"])
    assert (r.gpus_total, r.gpu_type, r.time_limit_min) == (3, None, None)
    r = parse_sbatch_args(["--gres=gpu"])
    assert r.gpus_total == 1
    r = parse_sbatch_args(["--gres=gpu:h100"])
    assert (r.gpus_total, r.gpu_type) == (1, "h100")
    # Non-GPU generic resources are not GPUs.
    r = parse_sbatch_args(["--gres=mps:100,gpu:1"])
    assert r.gpus_total == 1
    assert parse_sbatch_args(["--gres=mps:100"]).gpus_total == 0


def test_gres_per_node_multiplies_by_worst_node_count():
    r = parse_sbatch_args(["--gres=gpu:2", "-N", "3"])
    assert (r.gpus_total, r.gpus_per_node, r.nodes) == (6, 2, 3)
    r = parse_sbatch_args(["--gpus-per-node=h100:1", "--nodes=1-4"])
    assert (r.gpus_total, r.nodes) == (4, 4)


def test_gpus_total_forms():
    assert parse_sbatch_args(["--gpus=3"]).gpus_total == 3
    assert parse_sbatch_args(["-G", "h100:2"]).gpu_type == "h100"
    assert parse_sbatch_args(["-G4"]).gpus_total == 4
    r = parse_sbatch_args(["--gpus=3", "-N", "2"])
    assert (r.gpus_total, r.gpus_per_node) == (3, None)  # spread over nodes: no per-node figure
    assert parse_sbatch_args(["--gpus=3", "-N1"]).gpus_per_node == 3


def test_gpus_per_task():
    r = parse_sbatch_args(["--gpus-per-task=2", "-n", "3"])
    assert (r.gpus_total, r.ntasks) == (6, 3)
    r = parse_sbatch_args(["--gpus-per-task", "1", "--ntasks-per-node=2", "-N", "2"])
    assert (r.gpus_total, r.gpus_per_node, r.ntasks) == (4, 2, 4)
    assert parse_sbatch_args(["--gpus-per-task=1"]).gpus_total == 1


def test_gpus_per_socket():
    r = parse_sbatch_args(["--gpus-per-socket=1", "--sockets-per-node=2", "-N2"])
    assert (r.gpus_total, r.gpus_per_node) == (4, 2)
    assert parse_sbatch_args(["--gpus-per-socket=1", "-B", "2:4"]).gpus_total == 2


def test_short_and_long_forms_and_abbreviations():
    a = parse_sbatch_args(["-A", "chem-ai", "-p", "gpu", "-J", "train", "-a", "0-3", "-t", "5"])
    b = parse_sbatch_args(["--account=chem-ai", "--partition", "gpu", "--job-name=train",
                           "--array", "0-3", "--time=5"])
    c = parse_sbatch_args(["-Achem-ai", "-pgpu", "-Jtrain", "-a0-3", "-t5"])
    d = parse_sbatch_args(["--accou", "chem-ai", "--part=gpu", "--job-n", "train", "--arr=0-3", "--time", "5"])
    for r in (a, b, c, d):
        assert (r.account, r.partition, r.job_name, r.array_size, r.time_limit_min) == ("chem-ai", "gpu", "train", 4, 5)


def test_options_after_script_path_belong_to_the_script(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH --gres=gpu:2\nsrun true\n")
    r = parse_sbatch_args(["-t", "5", str(script), "--gres=gpu:4", "-t", "99"])
    assert (r.gpus_total, r.time_limit_min) == (2, 5)


def test_flags_do_not_swallow_values():
    # --hold and -H take no value: the next option must still be read.
    r = parse_sbatch_args(["--hold", "--gres=gpu:1", "-H", "-t", "7", "--exclusive", "--mem", "4G"])
    assert (r.gpus_total, r.time_limit_min) == (1, 7)


def test_newer_releases_options_take_their_values(tmp_path):
    # --segment N (23.11 on, what the planner asks of a topology/block site) takes a value: the
    # N must not be taken for the script, nor the options after it for the script's own
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun true\n")
    r = parse_sbatch_args(["--segment", "2", "-N2", "--gres=gpu:4", "-t", "10", str(script)])
    assert (r.gpus_total, r.time_limit_min) == (8, 10)


def test_sbatch_directives_and_command_line_wins():
    script = """#!/bin/bash
# a comment
#SBATCH --gres=gpu:h100:2   # trailing comment
#SBATCH -t 30
#SBATCH --account=bio-ml
#SBATCH -J "my job"
echo hi
#SBATCH --gres=gpu:8
"""
    r = parse_sbatch_args(["-t", "10"], script)
    assert (r.gpus_total, r.gpu_type, r.time_limit_min, r.account, r.job_name) == (2, "h100", 10, "bio-ml", "my job")
    r = parse_sbatch_args(["--gres=gpu:1", "-A", "physics"], script)
    assert (r.gpus_total, r.account, r.time_limit_min) == (1, "physics", 30)


def test_wrap_has_no_script():
    r = parse_sbatch_args(["--wrap", "hostname", "--gpus=2"])
    assert r.gpus_total == 2


def test_missing_script_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read batch script"):
        parse_sbatch_args(["--gpus=1", str(tmp_path / "nope.sh")])


@pytest.mark.parametrize("argv,needle", [
    (["--gres=gpu:x:y:z"], "--gres"),
    (["--gpus=two"], "--gpus"),
    (["--gpus-per-node=h100:"], "--gpus-per-node"),
    (["-N", "0"], "--nodes"),
    (["-N", "4-2"], "--nodes"),
    (["-n", "x"], "--ntasks"),
    (["-t", "soon"], "--time"),
    (["-a", "3-1"], "--array"),
    (["--gpus"], "--gpus needs a value"),
    (["--gres=gpu:h1$0:1"], "bad GPU type"),
    (["--acc", "chem-ai"], "ambiguous"),  # account or acctg-freq, as sbatch says too
])
def test_bad_values_raise_input_error(argv, needle):
    with pytest.raises(InputError) as e:
        parse_sbatch_args(argv)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_request_is_frozen():
    r = parse_sbatch_args(["--gpus=1"])
    assert isinstance(r, GpuRequest)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.gpus_total = 5  # type: ignore[misc]


W = {"h100": 2.0, "a100": 1.0}


@pytest.mark.parametrize("argv,expected", [
    (["--gres=gpu:h100:1", "-t", "10"], 1 * 2.0 * 10 * 60),
    (["--gres=gpu:2", "-t", "10"], 2 * 0.5 * 10 * 60),  # untyped -> default weight 0.5
    (["--gpus=a100:3", "-t", "5"], 3 * 1.0 * 5 * 60),
    (["--gpus=l4:3", "-t", "5"], 3 * 0.5 * 5 * 60),  # unknown type -> default weight
    (["--gpus-per-node=h100:2", "-N", "2-3", "-t", "1:00:00"], 6 * 2.0 * 60 * 60),
    (["--gres=gpu:h100:1", "-a", "0-9", "-t", "10"], 10 * 2.0 * 10 * 60),
    (["--gpus-per-task=1", "-n", "4", "-a", "1,3", "-t", "1-0"], 2 * 4 * 0.5 * 1440 * 60),
    # Several forms: the dearest counts.
    (["--gres=gpu:1", "--gpus=h100:2", "-N1", "-t", "10"], 2 * 2.0 * 10 * 60),
    (["-t", "10"], 0.0),
])
def test_worst_case_cost(argv, expected):
    r = parse_sbatch_args(argv)
    assert worst_case_gpu_seconds(r, W, default_weight=0.5) == pytest.approx(expected)


def test_default_and_unlimited_time():
    r = parse_sbatch_args(["--gres=gpu:1"])
    assert worst_case_gpu_seconds(r, {}, default_time_min=30) == 1800
    r = parse_sbatch_args(["--gres=gpu:1", "-t", "UNLIMITED"])
    assert r.time_unlimited and r.time_limit_min is None
    assert worst_case_gpu_seconds(r, {}, max_time_min=1440) == 86400
    with pytest.raises(InputError, match="cannot be priced"):
        worst_case_gpu_seconds(r, {})


# ------------------------------------------------------------- the table of forms and prices
TABLE = load_cases()
SBATCH_CASES = [c for c in TABLE if c.args is not None]


@pytest.mark.parametrize("case", SBATCH_CASES, ids=lambda c: c.id)
def test_table_sbatch_arguments_give_slurms_job_desc(case):
    """What sbatch 22.05 sends for the arguments (checked against the hook's probe lines on the
    test cluster in tests/test_gsbatch.py)."""
    assert sbatch_job_desc(_options(case.args, case.script, case.env)) == case.raw_job_desc
    req = parse_sbatch_args(case.args, case.script, env=case.env)
    assert req.view == view_from_job_desc(case.raw_job_desc)


@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.id)
def test_table_prices(case):
    want = expected_result(case)
    got = py_price_result(hook_price(view_from_job_desc(case.raw_job_desc), case.params, case.partitions))
    assert subset(got, want) == want


@pytest.mark.parametrize("case", [c for c in TABLE if c.expect_cpu is not None], ids=lambda c: c.id)
def test_table_cpu_prices(case):
    want = expected_cpu_result(case)
    got = py_cpu_result(py_cpu_price(view_from_job_desc(case.raw_job_desc), case.params, case.partitions))
    assert want is not None and subset(got, want) == want


def test_table_covers_every_form():
    descs = [c.raw_job_desc for c in TABLE]
    for f in ("tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket", "array_inx"):
        assert any(f in d for d in descs), f
    assert any(d.get("shared") == 0 and not any(k.startswith("tres") for k in d) for d in descs)  # --exclusive, no GPUs
    for p in ("gpu", "nolimit", "gpu,nolimit"):  # -t UNLIMITED everywhere
        assert any(d.get("time_limit") == INFINITE and d.get("partition", "gpu") == p for d in descs), p
    assert any(c.expect.get("refused") == "bad_time" for c in TABLE)
    assert any(c.expect.get("pin_time") for c in TABLE) and any(c.expect.get("pin_nodes") for c in TABLE)
    cpu = [c for c in TABLE if c.expect_cpu is not None]
    for f in ("cpus_per_task", "min_cpus", "pn_min_cpus", "cpus_per_tres", "ntasks_per_node", "shared", "array_inx"):
        assert any(f in c.job_desc for c in cpu), f
    assert any(c.expect_cpu.get("pin_nodes") for c in cpu) and any(c.expect_cpu.get("pin_time") for c in cpu)
    assert any("refused" in c.expect_cpu for c in cpu)


def test_worst_case_gpu_seconds_is_the_hook_price_in_one_partition():
    req = parse_sbatch_args(["--gres=gpu:h100:2", "-p", "nolimit", "-a", "0-3", "--exclusive"])
    part = HookPartition("default", default_time=45, max_time=None, default=True)
    p = hook_price(HookView(**{**vars(req.view), "partition": None}), PriceParams(weights=W, default_weight=0.5,
                                                                                 default_time_min=45), [part])
    assert worst_case_gpu_seconds(req, W, default_weight=0.5, default_time_min=45) == p.cost == 4 * 2 * 2.0 * 45 * 60


def test_sbatch_massages_node_and_task_counts():
    def desc(*args, env=None):
        return sbatch_job_desc(_options(list(args), None, env))
    assert desc("-N", "2") == {"min_nodes": 2, "max_nodes": 2}
    assert desc("-N", "1-3") == {"min_nodes": 1, "max_nodes": 3}
    assert desc("-N", "2-0") == {"min_nodes": 2}  # max 0: no maximum
    assert desc("-n", "3") == {"num_tasks": 3}
    assert desc("-n", "2", "-N", "4") == {"min_nodes": 2, "max_nodes": 2, "num_tasks": 2}
    assert desc("--ntasks-per-node=3") == {"num_tasks": 3, "ntasks_per_node": 3}
    assert desc("--ntasks-per-node=3", "-N", "1-2") == {"min_nodes": 1, "max_nodes": 2, "ntasks_per_node": 3}
    assert desc("-B", "2:4") == {"num_tasks": 8, "sockets_per_node": 2}
    assert desc("--exclusive") == {"shared": 0}
    assert desc("--exclusive=user") == {"shared": 2}
    assert desc("--exclusive=mcs") == {"shared": 3}
    assert desc("--oversubscribe") == {"shared": 1}
    assert desc("-t", "UNLIMITED") == desc("-t", "0") == {"time_limit": INFINITE}
    assert desc("--gres=none") == {}
    assert desc("--gres=gpu:2,mps:100") == {"tres_per_node": "gres:gpu:2,gres:mps:100"}
    assert desc("--gpus-per-node=h100:1,2") == {"tres_per_node": "gres:gpu:h100:1,gres:gpu:2"}
    assert desc("--gpus=4", "--gres=gpu:2") == {"tres_per_job": "gres:gpu:4", "tres_per_node": "gres:gpu:2",
                                                "min_nodes": 2, "max_nodes": 2}
    env = {"SBATCH_PARTITION": "nolimit", "SBATCH_EXCLUSIVE": "user"}
    assert desc(env=env) == {"partition": "nolimit", "shared": 2}
    with pytest.raises(InputError, match="--exclusive"):
        desc("--exclusive=sometimes")
