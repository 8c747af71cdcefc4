import pytest
import yaml

from slurmgov.errors import InputError
from slurmgov.intent import jobspec
from slurmgov.site import yamlfile

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


LOADERS = [pytest.param(yamlfile.PurePythonLoader, id="pure-python")]
if yamlfile.LIBYAML:
    LOADERS.append(pytest.param(yamlfile.LibYAMLLoader, id="libyaml"))

ODD_YAML = """\
defaults: &d
  cpus: 4
  time: 00:10:00
numbers: [1, 0x1f, 1.5, .inf, -2, '3', "4"]
flags: [true, no, null, ~, '']
when: 2024-01-02
steps:
  - &s {id: a, run: echo}
  - *s
  - <<: *d
    cpus: 8
"""


@pytest.fixture(params=LOADERS)
def loader(request, monkeypatch):
    monkeypatch.setattr(yamlfile, "LOADER", request.param)
    return request.param


def test_yaml_loaders_build_what_safe_load_builds_and_keep_lines(loader):
    doc = yamlfile.load_text(ODD_YAML, "o.yaml")
    assert doc.data == yaml.safe_load(ODD_YAML)
    assert doc.data["steps"][2] == {"cpus": 8, "time": "00:10:00"}  # merged defaults, the key written here wins
    assert doc.where(("steps", 2, "cpus")) == "o.yaml:11"
    assert doc.where(("steps", 2, "time")) == "o.yaml:3"  # a merged key: where its value is written
    assert doc.where(("steps", 1, "id")) == "o.yaml:8"  # inside an alias: where its anchor is
    assert doc.where(("numbers", 5)) == "o.yaml:4"


@pytest.mark.parametrize("text,line", [
    (BASE.format(extra="  - id: b\n    run: echo\n    resources:\n      gpus: -1"), "x.yaml:9: step 'b': resources.gpus:"),
    ("workflow: w\naccount: a\naccount: b\n", "x.yaml:3: duplicate key 'account'"),
    ("workflow: w\naccount: a\nsteps:\n  - {id: a, run: [unclosed\n", "x.yaml:5: not valid YAML"),
    ("workflow: w\naccount: a\nsteps: &x\n  - *x\n", "x.yaml:3: recursive YAML alias"),
    ("workflow: w\naccount: a\nsteps:\n  - {id: a, run: !!python/name:os.system x}\n", "x.yaml:4: not valid YAML"),
    ("workflow: w\naccount: a\nsteps:\n  - {? [k]: v}\n", "x.yaml:4: a mapping key must be a plain value"),
])
def test_either_loader_names_the_line(loader, text, line):
    with pytest.raises(InputError) as exc:
        jobspec.loads(text, "x.yaml")
    assert str(exc.value).startswith(line), str(exc.value)


def test_alias_bomb_is_built_once_per_anchor(loader):
    # ten levels of ten aliases: 10**10 leaves if every alias were walked again
    text = "a0: &a0 [x, y]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 11))
    doc = yamlfile.load_text(text, "x.yaml")
    deep = doc.data["a10"]
    for _ in range(10):
        deep = deep[9]
    assert deep == ["x", "y"] and doc.where(("a10", 9, 9, 0)) == "x.yaml:10"  # the line of anchor a9


def _laughs(levels: int, call: str = "slurmgov.execution.demo_steps:chat") -> str:
    """A jobspec whose step params are ``levels`` of ten aliases each: 10**levels values written out."""
    rows = "".join(f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else '1'}]\n" for i in range(levels))
    return f"workflow: w\naccount: physics\nsteps:\n  - id: a\n    call: '{call}'\n    params:\n{rows}"


def test_a_jobspec_whose_aliases_expand_past_the_limit_is_refused_in_one_line(loader):
    with pytest.raises(InputError) as exc:
        jobspec.loads(_laughs(9), "x.yaml")  # 600 bytes, 10**9 values written out
    assert str(exc.value).startswith("x.yaml: its YAML aliases expand it by ") and "at most 1,000,000" in str(exc.value)
    assert "\n" not in str(exc.value)
    wf = jobspec.loads(_laughs(5), "x.yaml")  # aliases adding 111,110 values: allowed
    assert len(wf.steps[0].params["l4"]) == 10


def test_a_big_jobspec_written_out_is_not_refused_for_its_size():
    steps = "".join(f"  - {{id: s{i}, run: echo, env: {{A: '{i}'}}, after: [{f's{i - 1}' if i else ''}]}}\n"
                    for i in range(20_000))
    doc = yamlfile.load_text("workflow: w\naccount: a\nsteps:\n" + steps, "big.yaml")
    assert doc.alias_values == 0 and doc.values > 200_000
    assert len(jobspec.parse(doc).steps) == 20_000
