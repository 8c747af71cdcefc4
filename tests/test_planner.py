import pytest

from slurmgov import yamlfile
from slurmgov.errors import InfeasibleError
from slurmgov.governance import site as site_mod
from slurmgov.intent import jobspec, planner


@pytest.fixture(scope="module")
def demo():
    from pathlib import Path

    return site_mod.load(Path(__file__).resolve().parents[1] / "site_configs" / "demo-cluster.yaml")


@pytest.fixture(scope="module")
def large():
    from pathlib import Path

    return site_mod.load(Path(__file__).resolve().parents[1] / "site_configs" / "large-fat-tree.yaml")


def wf(steps: str, account="chem-ai", extra=""):
    return jobspec.loads(f"workflow: w\naccount: {account}\n{extra}steps:\n{steps}", "w.yaml")


def test_fanout_shares_one_pilot(root, demo):
    p = planner.plan(jobspec.load(root / "jobspecs" / "research-fanout.yaml"), demo)
    gpu = [a for a in p.allocations if a.kind == "gpu"]
    assert len(gpu) == 1
    a = gpu[0]
    assert set(a.steps) == {"research-1", "research-2", "research-3", "research-4", "critic"}
    assert (a.nodes, a.gpus_per_node) == (1, 4)  # four 1-GPU researchers at once on one node
    # worst case: researchers 20 min x 2 attempts, then the critic 10 min
    assert a.time_s == 50 * 60 and a.cost_h == pytest.approx(4 * 50 / 60)
    opts = a.slurm_options("deep-research", "chem-ai")
    assert "--gpus-per-node=h100:4" in opts and "--nodes=1" in opts and "--time=00:50:00" in opts
    assert any("share allocation" in n for n in p.notes)


def test_leaf_switch_step_gets_switches_option(root, demo):
    p = planner.plan(jobspec.load(root / "jobspecs" / "multinode-finetune.yaml"), demo)
    ft = p.allocation(p.steps["finetune"].alloc)
    opts = ft.slurm_options("finetune-leaf", "physics")
    assert "--nodes=2" in opts and "--gpus-per-node=h100:4" in opts and "--switches=1@00:10:00" in opts
    assert ft.time_s == 2 * 3600  # one retry doubles the worst case
    # evaluation comes after the fine-tune in a smaller allocation: no 8 GPUs held for a 1-GPU judge
    ev = p.allocation(p.steps["evaluate"].alloc)
    assert ev.id != ft.id and ev.gpus == 1 and ev.start_s == ft.end_s


def test_tensor_parallel_stays_in_one_node(root, demo):
    p = planner.plan(jobspec.load(root / "jobspecs" / "tensor-parallel-eval.yaml"), demo)
    a = p.allocation(p.steps["generate-tp4"].alloc)
    assert a.nodes == 1 and a.gpus_per_node == 4 and a.constraint is None
    assert p.steps["generate-tp4"].kv_bytes == 32 * 8192 * 2 * 80 * 8 * 128 * 2


def test_shares_add_up_to_the_price(root, demo):
    for name in ("research-fanout", "tensor-parallel-eval", "multinode-finetune"):
        p = planner.plan(jobspec.load(root / "jobspecs" / f"{name}.yaml"), demo)
        assert sum(p.shares().values()) == pytest.approx(p.cost_h, abs=1e-9)
        assert p.cost_h == pytest.approx(sum(a.gpus * a.time_s * a.weight / 3600 for a in p.allocations))
        for s in p.steps.values():  # a step's share covers its own worst case
            assert s.share_h + 1e-9 >= s.worst_gpu_s / 3600 * p.allocation(s.alloc).weight or s.gpus == 0


def test_sixteen_gpus_in_one_nvlink_domain_is_refused(large):
    w = wf("  - {id: tp16, run: x, within: nvlink-domain, resources: {gpus: 16, nodes: 2}}\n")
    with pytest.raises(InfeasibleError) as exc:
        planner.plan(w, large)
    assert str(exc.value) == (  # the step's file and line, as jobspec errors name them
        "w.yaml:4: step 'tp16': needs 16 GPUs in one NVLink domain; the largest NVLink domain in partition h100 has 8 h100"
    )


@pytest.mark.parametrize("step,fragment", [
    ("{id: big, run: x, resources: {gpus: 8}}", "needs 8 GPUs on one node; the largest h100 node in partition gpu has 4; spread it with nodes: 2"),
    ("{id: wide, run: x, within: leaf-switch, resources: {gpus: 12, nodes: 3}}", "needs 3 nodes under one leaf switch; at most 2"),
    ("{id: huge, run: x, resources: {gpus: 20, nodes: 5}}", "needs 5 nodes with 4 h100 each; partition gpu has 4"),
    ("{id: a100, run: x, resources: {gpus: 1, gpu_type: a100}}", "no a100 GPUs in partition gpu (it has: h100)"),
    ("{id: long, run: x, resources: {gpus: 1, time: 3-00:00:00}}", "exceeds partition gpu's maximum"),
    ("{id: cpu2, run: x, resources: {nodes: 2}}", "cannot span 2 nodes"),
    ("{id: fat, run: x, resources: {gpus: 1, memory: 128G}}", "needs 131072 MB of memory per node; the largest h100 node in partition gpu has 65536 MB"),
    ("{id: kv, run: x, resources: {gpus: 1}, context: {model: llama-3-70b, tokens: 8192, sequences: 32}}",
     "context needs 211.5 GiB (KV 80.0 + weights 131.5); 1 x h100 (80 GiB) is too little; ask for at least 3 GPUs"),
])
def test_infeasible_requests_name_the_reason(demo, step, fragment):
    with pytest.raises(InfeasibleError) as exc:
        planner.plan(wf(f"  - {step}\n"), demo)
    assert fragment in str(exc.value)


def test_gap_splits_allocations(demo):
    # GPU work, then a long CPU-only step, then GPU work: no GPU is held across the gap
    w = wf("  - {id: a, run: x, resources: {gpus: 2, time: 10}}\n"
           "  - {id: cpu, run: x, after: [a], resources: {time: 30}}\n"
           "  - {id: b, run: x, after: [cpu], resources: {gpus: 2, time: 10}}\n")
    p = planner.plan(w, demo)
    assert p.steps["a"].alloc != p.steps["b"].alloc
    assert p.cost_h == pytest.approx(2 * 10 / 60 * 2)


def test_wide_fanout_is_capped_by_the_partition(demo):
    steps = "".join(f"  - {{id: s{i}, run: x, resources: {{gpus: 1, time: 10}}}}\n" for i in range(40))
    p = planner.plan(wf(steps), demo)
    (a,) = p.allocations
    assert (a.nodes, a.gpus_per_node) == (4, 4)  # 16 GPUs: the whole partition
    assert a.time_s == 3 * 10 * 60  # 40 steps in rounds of 16
    assert any("queue inside the allocation" in n for n in p.notes)


def test_packing_mixed_sizes(demo):
    # 3 + 1 fit one 4-GPU node; 2 + 2 another: two nodes, not four
    steps = "".join(f"  - {{id: s{i}, run: x, resources: {{gpus: {g}, time: 10}}}}\n" for i, g in enumerate([3, 2, 2, 1]))
    (a,) = planner.plan(wf(steps), demo).allocations
    assert (a.nodes, a.gpus_per_node) == (2, 4)


def test_weights_price_gpu_types(large):
    w = wf("  - {id: a, run: x, resources: {gpus: 8, gpu_type: h200, time: 60}}\n", extra="partition: h200\n")
    assert planner.plan(w, large).cost_h == pytest.approx(8 * 1.4)


def test_multi_node_nvlink_domain_becomes_a_matching_or_constraint():
    text = (
        "site: nvl\ngpu_types: {gb200: {memory_gb: 186}}\n"
        "nodes:\n  - {names: 'r[01-08]', gpus: 4, gpu_type: gb200}\n"
        "nvlink_domains:\n  - {name: nvlA, nodes: 'r[01-04]'}\n  - {name: nvlB, nodes: 'r[05-08]'}\n"
        "partitions:\n  - {name: gpu, nodes: 'r[01-08]'}\n"
    )
    s = site_mod.parse(yamlfile.load_text(text, "nvl.yaml"))
    p = planner.plan(wf("  - {id: tp16, run: x, within: nvlink-domain, resources: {gpus: 16, nodes: 4}}\n"), s)
    (a,) = p.allocations
    assert a.constraint == "[nvlA|nvlB]" and "--constraint=[nvlA|nvlB]" in a.slurm_options("w", "x")


def test_plan_json_round_trips(root, demo):
    import json

    d = planner.plan(jobspec.load(root / "jobspecs" / "research-fanout.yaml"), demo).to_dict()
    assert json.loads(json.dumps(d))["worst_case_gpu_hours"] == pytest.approx(d["worst_case_gpu_hours"])
    assert {"slurm_options", "steps", "gpus"} <= set(d["allocations"][1])


def test_attribution_split_adds_up_to_the_charge():
    from slurmgov.governance.attribution import split

    parts, idle = split(100.0, {"a": 30.0, "b": 20.0})
    assert parts == {"a": 30.0, "b": 20.0} and idle == 50.0
    # steps metered a little more than sacct's whole seconds: scaled down, nothing idle
    parts, idle = split(10.0, {"a": 6.0, "b": 6.0})
    assert idle == 0 and sum(parts.values()) == pytest.approx(10.0) and parts["a"] == pytest.approx(5.0)
    assert split(0, {"a": 1.0}) == ({"a": 0.0}, 0.0)
