import textwrap

import pytest

from slurmgov.errors import InputError
from slurmgov.intent import jobspec

EXAMPLES = ["research-fanout", "tensor-parallel-eval", "multinode-finetune"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_load(root, name):
    wf = jobspec.load(root / "jobspecs" / f"{name}.yaml")
    assert wf.steps and wf.account
    order = [s.id for s in jobspec.topo_order(wf)]
    for s in wf.steps:  # every dependency comes before its dependant
        assert all(order.index(d) < order.index(s.id) for d in s.after)


def test_fields_are_parsed(root):
    wf = jobspec.load(root / "jobspecs" / "multinode-finetune.yaml")
    ft = wf.step("finetune")
    assert (ft.resources.gpus, ft.resources.nodes, ft.resources.gpus_per_node) == (8, 2, 4)
    assert ft.resources.time_s == 3600 and ft.resources.memory_mb == 16 * 1024
    assert ft.placement == "leaf-switch" and ft.retries == 1
    wf = jobspec.load(root / "jobspecs" / "research-fanout.yaml")
    r2 = wf.step("research-2")  # a YAML merge key keeps the shared fields
    assert r2.params == {"angle": 2} and r2.context.share == "sysprompt-v1" and r2.after == ("plan", "retrieve")
    assert r2.context.shape.bytes_per_token == 2 * 32 * 8 * 128 * 2


BASE = """\
workflow: w
account: chem-ai
steps:
  - id: a
    run: echo a
{extra}
"""

BAD = [
    # (text appended to / replacing the document, expected fragments of the one-line error)
    ("  - id: b\n    run: echo\n    after: [nope]", ["x.yaml:", "step 'b'", "after", "unknown step 'nope'"]),
    ("  - id: b\n    run: echo\n    after: [c]\n  - id: c\n    run: echo\n    after: b",
     ["x.yaml:", "cycle", "c -> b -> c"]),  # in run order: c, then b, then c again
    ("  - id: a\n    run: echo", ["x.yaml:", "duplicate step id 'a'"]),
    ("  - id: b\n    run: echo\n    resources: {gpus: -2}", ["x.yaml:", "step 'b'", "resources.gpus", "greater than or equal to 0"]),
    ("  - id: b\n    run: echo\n    resources: {gpus: 1, time: 'soon'}", ["step 'b'", "resources.time", "not a Slurm time limit"]),
    ("  - id: b\n    run: echo\n    resources: {gpus: 3, nodes: 2}", ["step 'b'", "must split evenly"]),
    ("  - id: b\n    run: echo\n    resources: {gpus: 1, colour: red}", ["step 'b'", "resources.colour", "unknown key"]),
    ("  - id: b\n    run: echo\n    call: m:f", ["step 'b'", "exactly one of `run`"]),
    ("  - id: b\n    call: 'not a callable'", ["step 'b'", "call", "not a Python callable"]),
    ("  - id: b\n    run: echo\n    within: node\n    resources: {gpus: 8, nodes: 2}", ["step 'b'", "within: node"]),
    ("  - id: b\n    run: echo\n    within: rack", ["step 'b'", "within"]),
    ("  - id: b\n    run: echo\n    resources: {gpus: 1}\n    context: {model: gpt-17, tokens: 10}", ["step 'b'", "context.model", "unknown model preset"]),
    ("  - id: 'b; rm -rf /'\n    run: echo", ["x.yaml:", "id", "should match pattern"]),
    ("  - id: b\n    run: echo\n    retries: 99", ["step 'b'", "retries"]),
    ("  - id: b\n    run: echo\n    env: {'BAD-NAME': x}", ["step 'b'", "env", "not an environment variable name"]),
]


@pytest.mark.parametrize("extra,fragments", BAD)
def test_bad_jobspecs_give_one_clear_line(extra, fragments):
    with pytest.raises(InputError) as exc:
        jobspec.loads(BASE.format(extra=extra), "x.yaml")
    msg = str(exc.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_error_names_the_line():
    text = BASE.format(extra="  - id: b\n    run: echo\n    resources:\n      gpus: -1")
    with pytest.raises(InputError) as exc:
        jobspec.loads(text, "x.yaml")
    assert str(exc.value).startswith("x.yaml:9: step 'b': resources.gpus:")


@pytest.mark.parametrize("text,fragment", [
    ("workflow: w\naccount: a\nsteps: []\n", "steps"),
    ("workflow: w\nsteps:\n  - {id: a, run: echo}\n", "account: required field is missing"),
    ("workflow: w\naccount: a\nacount: b\nsteps:\n  - {id: a, run: echo}\n", "x.yaml:3: acount: unknown key"),
    ("workflow: w\naccount: a\naccount: b\nsteps:\n  - {id: a, run: echo}\n", "x.yaml:3: duplicate key 'account'"),
    ("workflow: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "a jobspec is a YAML mapping"),
    ("workflow: w\naccount: \"chem'; DROP TABLE holds;--\"\nsteps:\n  - {id: a, run: echo}\n", "account"),
])
def test_bad_documents(text, fragment):
    with pytest.raises(InputError) as exc:
        jobspec.loads(text, "x.yaml")
    assert fragment in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        jobspec.load(tmp_path / "nope.yaml")


def test_long_chain_has_no_recursion_limit():
    steps = "\n".join(f"  - {{id: s{i}, run: echo, after: [s{i - 1}]}}" for i in range(1, 3000))
    wf = jobspec.loads("workflow: w\naccount: a\nsteps:\n  - {id: s0, run: echo}\n" + steps)
    assert [s.id for s in jobspec.topo_order(wf)][-1] == "s2999"
