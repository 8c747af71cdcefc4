import pytest

from slurmgov.errors import InfeasibleError
from slurmgov.intent import jobspec, planner
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile


@pytest.fixture(scope="module")
def demo():
    from pathlib import Path

    return site_mod.load(Path(__file__).resolve().parents[1] / "site_configs" / "demo-cluster.yaml")


@pytest.fixture(scope="module")
def large():
    from pathlib import Path

    return site_mod.load(Path(__file__).resolve().parents[1] / "site_configs" / "large-fat-tree.yaml")


def generated(n: int) -> jobspec.Workflow:
    """bench/plan_scale.py's agent DAG: waves of 1-GPU, TP-8 and 2-node steps, fanned out and in."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import plan_scale

    return jobspec.Workflow.model_validate(plan_scale.generate(n))


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


def test_a_context_that_fits_only_in_fp8_is_planned_with_it_when_allowed(demo):
    # llama-3-70b, 8 x 8192 tokens on 2 h100s (2 x 72 GiB usable): weights 131.5 GiB + a bf16
    # KV of 20 GiB do not fit; an fp8 KV of 10 GiB does.
    ctx = "context: {model: llama-3-70b, tokens: 8192, sequences: 8%s}"
    step = "  - {id: gen, run: x, resources: {gpus: 2}, %s}\n"
    p = planner.plan(wf(step % (ctx % ", kv_fp8: if-needed")), demo)
    gen = p.steps["gen"]
    assert gen.kv_dtype == "fp8" and gen.kv_fp8_saves_gpus == 3
    assert gen.kv_bytes == 8 * 8192 * 2 * 80 * 8 * 128 * 1 + 2 * 80 * 8 * 4  # 1 B/element + scales
    assert "step 'gen': KV cache planned in fp8 (e4m3); at the model's dtype it needs 3 GPUs, it asked for 2" in p.notes
    assert p.to_dict()["steps"][0]["kv_dtype"] == "fp8"  # plan --json carries it
    with pytest.raises(InfeasibleError, match=r"ask for at least 3 GPUs; an fp8 KV cache would fit \(context: "):
        planner.plan(wf(step % (ctx % "")), demo)  # not allowed: refused, with the hint
    with pytest.raises(InfeasibleError, match=r"context needs 141.5 GiB with an fp8 KV cache .*ask for at least 2 GPUs"):
        planner.plan(wf(step.replace("gpus: 2", "gpus: 1") % (ctx % ", kv_fp8: if-needed")), demo)
    # Allowed but not needed: the model's dtype stays, with no note.
    p = planner.plan(wf(step.replace("gpus: 2", "gpus: 3") % (ctx % ", kv_fp8: if-needed")), demo)
    assert p.steps["gen"].kv_dtype == "bf16" and not any("fp8" in n for n in p.notes)
    p = planner.plan(wf(step.replace("gpus: 2", "gpus: 3") % (ctx % ", kv_fp8: always")), demo)
    assert p.steps["gen"].kv_dtype == "fp8" and p.steps["gen"].kv_fp8_saves_gpus == 0


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
    ("{id: cpus, run: x, resources: {gpus: 1, cpus: 64}}", "needs 64 CPUs per node; the largest h100 node in partition gpu has 16"),
    ("{id: both, run: x, resources: {gpus: 4, nodes: 2, cpus: 17}}", "needs 17 CPUs per node; the largest h100 node in partition gpu has 16"),
    ("{id: kv, run: x, resources: {gpus: 1}, context: {model: llama-3-70b, tokens: 8192, sequences: 32}}",
     "context needs 211.5 GiB (KV 80.0 + weights 131.5); 1 x h100 (80 GiB) is too little; ask for at least 3 GPUs"),
])
def test_infeasible_requests_name_the_reason(demo, step, fragment):
    with pytest.raises(InfeasibleError) as exc:
        planner.plan(wf(f"  - {{id: first, run: x}}\n  - {step}\n"), demo)
    step_id = step.split(",")[0].removeprefix("{id: ")
    assert str(exc.value).startswith(f"w.yaml:5: step '{step_id}': ")  # the file and line of the step
    assert fragment in str(exc.value)


MIXED = (
    "site: mixed\ngpu_types: {h100: {memory_gb: 80}}\n"
    "nodes:\n  - {names: 'thin[1-2]', gpus: 4, gpu_type: h100, cpus: 8, memory: 64G}\n"
    "  - {names: 'fat[1-2]', gpus: 4, gpu_type: h100, cpus: 64, memory: 512G}\n"
    "partitions:\n  - {name: default, nodes: 'thin[1-2],fat[1-2]', default: true}\n"
)


def test_cpus_and_memory_are_asked_of_the_nodes_that_have_them():
    s = site_mod.parse(yamlfile.load_text(MIXED, "mixed.yaml"))
    p = planner.plan(wf("  - {id: a, run: x, resources: {gpus: 1, cpus: 48, memory: 256G}}\n"
                        "  - {id: b, run: x, resources: {gpus: 1}}\n"), s)
    (a,) = p.allocations
    assert a.cpus_per_node >= 48 and a.memory_mb >= 256 * 1024  # not cut to the thin nodes' 8 CPUs / 64G
    with pytest.raises(InfeasibleError, match="needs 65 CPUs per node; the largest h100 node in partition default has 64"):
        planner.plan(wf("  - {id: a, run: x, resources: {gpus: 1, cpus: 65}}\n"), s)
    lopsided = site_mod.parse(yamlfile.load_text(MIXED.replace("cpus: 8, memory: 64G", "cpus: 8, memory: 1T"), "m.yaml"))
    with pytest.raises(InfeasibleError, match="needs 48 CPUs and 786432 MB of memory on one h100 node; no node in partition default has both"):
        planner.plan(wf("  - {id: a, run: x, resources: {gpus: 1, cpus: 48, memory: 768G}}\n"), lopsided)


def ones(n: int, minutes: int = 10) -> str:
    return "".join(f"  - {{id: s{i}, run: x, resources: {{gpus: 1, time: {minutes}}}}}\n" for i in range(n))


def test_makespan_includes_queueing_inside_the_allocation(root):
    local = site_mod.load(root / "site_configs" / "local.yaml")  # 8 GPU slots
    after_all = ", ".join(f"s{i}" for i in range(16))
    p = planner.plan(wf(ones(16) + f"  - {{id: join, run: x, after: [{after_all}], resources: {{time: 5}}}}\n"), local)
    a = p.allocation(p.steps["s0"].alloc)
    assert a.gpus == 8 and a.time_s == 20 * 60 and a.queue_s == 10 * 60  # two rounds of eight
    assert max(p.steps[f"s{i}"].end_s for i in range(16)) == 20 * 60
    assert p.steps["join"].start_s == 20 * 60  # what comes after waits for the second round
    assert p.makespan_s == 25 * 60 and p.to_dict()["worst_case_makespan_s"] == 25 * 60


def test_a_wait_delays_the_allocations_after_it(demo):
    # 40 one-GPU steps on 16 GPUs (three rounds), then 8 more after them: the second wave's
    # allocation starts when the first wave's third round can end, not after one round
    first = ones(40)
    second = "".join(f"  - {{id: t{i}, run: x, after: [s{i}], resources: {{gpus: 1, time: 10}}}}\n" for i in range(8))
    p = planner.plan(wf(first + second), demo)
    assert p.steps["t0"].start_s == 30 * 60
    assert p.makespan_s == 40 * 60


@pytest.mark.parametrize("n", [300, 2000])
def test_worst_case_schedule_is_consistent(large, n):
    p = planner.plan(generated(n), large)
    for st in p.steps.values():  # every step starts after its dependencies' worst-case ends
        assert all(st.start_s >= p.steps[d].end_s for d in st.after)
        assert st.end_s == st.start_s + st.run_s + st.queue_s
    for a in p.allocations:  # and an allocation's time covers its steps' worst case, queueing included
        members = [p.steps[s] for s in a.steps]
        span = max(m.end_s for m in members) - min(m.start_s for m in members)
        if a.kind == "gpu" and "capped" not in " ".join(a.notes):
            assert a.time_s >= span
    assert p.makespan_s == max(s.end_s for s in p.steps.values())


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


BLOCKS = (
    "site: nvl\ngpu_types: {gb200: {memory_gb: 186}}\n"
    "nodes:\n  - {names: 'r[01-10]', gpus: 4, gpu_type: gb200}\n"
    "nvlink_blocks: true\nSIZES"
    "nvlink_domains:\n  - {name: nvlA, nodes: 'r[01-04]'}\n  - {name: nvlB, nodes: 'r[05-06]'}\n"
    "partitions:\n  - {name: gpu, nodes: 'r[01-10]'}\n"
)


def test_on_a_topology_block_site_an_nvlink_domain_step_asks_for_one_segment():
    """Slurm 23.11+ with topology/block: the domains are Slurm's blocks; the allocation asks
    --segment=<its nodes> (one segment, which Slurm keeps inside one block), not node features."""
    s = site_mod.parse(yamlfile.load_text(BLOCKS.replace("SIZES", ""), "nvl.yaml"))
    p = planner.plan(wf("  - {id: tp8, run: x, within: nvlink-domain, resources: {gpus: 8, nodes: 2}}\n"), s)
    (a,) = p.allocations
    opts = a.slurm_options("w", "x")
    assert a.constraint is None and a.segment == 2 and "--segment=2" in opts and "--nodes=2" in opts
    assert not any(o.startswith("--constraint") for o in opts)
    # two steps at once: side by side inside the largest block (4 nodes), still one segment
    p = planner.plan(wf("  - {id: a, run: x, within: nvlink-domain, resources: {gpus: 8, nodes: 2}}\n"
                        "  - {id: b, run: x, within: nvlink-domain, resources: {gpus: 8, nodes: 2}}\n"), s)
    (a,) = p.allocations
    assert (a.nodes, a.segment) == (4, 4)
    # other placements on the same site ask for no segment
    p = planner.plan(wf("  - {id: any, run: x, resources: {gpus: 8, nodes: 2}}\n"), s)
    assert all(x.segment is None and "--segment" not in " ".join(x.slurm_options("w", "x")) for x in p.allocations)


def test_on_a_topology_block_site_a_step_larger_than_any_block_is_refused_before_anything_queues():
    s = site_mod.parse(yamlfile.load_text(BLOCKS.replace("SIZES", ""), "nvl.yaml"))
    with pytest.raises(InfeasibleError, match="needs 20 GPUs in one NVLink domain; the largest NVLink domain in "
                                              "partition gpu has 16 gb200"):
        planner.plan(wf("  - {id: big, run: x, within: nvlink-domain, resources: {gpus: 20, nodes: 5}}\n"), s)
    # BlockSizes' base size bounds what Slurm keeps inside one block, though nvlA has 4 nodes
    s = site_mod.parse(yamlfile.load_text(BLOCKS.replace("SIZES", "block_sizes: [2, 4]\n"), "nvl.yaml"))
    assert s.topology.domain_gpus("gpu", "gb200") == 8
    with pytest.raises(InfeasibleError, match="needs 12 GPUs in one NVLink domain; the largest NVLink domain in "
                                              "partition gpu has 8 gb200"):
        planner.plan(wf("  - {id: tp12, run: x, within: nvlink-domain, resources: {gpus: 12, nodes: 3}}\n"), s)
    p = planner.plan(wf("  - {id: a, run: x, within: nvlink-domain, resources: {gpus: 8, nodes: 2}}\n"
                        "  - {id: b, run: x, within: nvlink-domain, resources: {gpus: 8, nodes: 2}}\n"), s)
    assert [(x.nodes, x.segment) for x in p.allocations] == [(2, 2)]  # one block's base at a time: they queue


def test_plan_json_round_trips(root, demo):
    import json

    d = planner.plan(jobspec.load(root / "jobspecs" / "research-fanout.yaml"), demo).to_dict()
    assert json.loads(json.dumps(d))["worst_case_gpu_hours"] == pytest.approx(d["worst_case_gpu_hours"])
    assert {"slurm_options", "steps", "gpus"} <= set(d["allocations"][1])


def test_attribution_split_adds_up_to_the_charge():
    from slurmgov.policy.attribution import split

    parts, idle = split(100.0, {"a": 30.0, "b": 20.0})
    assert parts == {"a": 30.0, "b": 20.0} and idle == 50.0
    # steps metered a little more than sacct's whole seconds: scaled down, nothing idle
    parts, idle = split(10.0, {"a": 6.0, "b": 6.0})
    assert idle == 0 and sum(parts.values()) == pytest.approx(10.0) and parts["a"] == pytest.approx(5.0)
    assert split(0, {"a": 1.0}) == ({"a": 0.0}, 0.0)


def test_schedule_stays_consistent_when_the_waits_do_not_settle(demo, monkeypatch):
    # one round only: the second wave is still grouped with the first, its wait is kept, and
    # the allocation is stretched to cover it rather than ending before its steps can
    monkeypatch.setattr(planner, "MAX_PASSES", 1)
    second = "".join(f"  - {{id: t{i}, run: x, after: [s{i}], resources: {{gpus: 1, time: 10}}}}\n" for i in range(8))
    p = planner.plan(wf(ones(40) + second), demo)
    for a in p.allocations:
        members = [p.steps[s] for s in a.steps]
        assert a.time_s >= max(m.end_s for m in members) - min(m.start_s for m in members)
        assert a.cost_h == pytest.approx(a.gpus * a.time_s / 3600)
    assert all(p.steps[f"t{i}"].start_s >= p.steps[f"s{i}"].end_s for i in range(8))


def test_notes_name_the_allocations_as_the_plan_numbers_them(large):
    p = planner.plan(generated(3000), large)
    queued = [n for n in p.notes if "queue inside the allocation" in n]
    assert queued
    for n in queued:
        assert p.allocation(n.split(":")[0]).queue_s > 0
