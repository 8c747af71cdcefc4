"""Hostile and random input: every jobspec or site file gives a clean one-line error or a valid
plan, never a traceback or a hang (hypothesis)."""

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurmgov.errors import SlurmgovError
from slurmgov.intent import jobspec, planner
from slurmgov.site import model as site_mod

ROOT = Path(__file__).resolve().parents[1]
DEMO = site_mod.load(ROOT / "site_configs" / "demo-cluster.yaml")
NASTY = ["", " ", "a", "%s", "%n", "[x]", ".*", "'; DROP TABLE holds;--", "$(rm -rf /)", "`id`", "a\nb",
         "a\tb", "é", "🤖", "x" * 300, "-1", "0", "1e9", "00:00:00", "3-99:99:99", "gpu:h100:2", "node",
         "leaf-switch", "nvlink-domain", "any", "llama-3-8b", "h100", "chem-ai", "a:b", "m:f", "os:system"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.sampled_from(NASTY), st.text(max_size=20))
STEP_KEYS = ["id", "run", "call", "params", "env", "after", "resources", "within", "context", "retries", "colour"]
RES_KEYS = ["gpus", "gpu_type", "nodes", "cpus", "memory", "time", "bogus"]


def maps(keys, values):
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys))


resources = maps(RES_KEYS, scalars)
context = maps(["model", "tokens", "sequences", "share", "x"],
               st.one_of(scalars, maps(["layers", "kv_heads", "head_dim", "dtype", "params_b"], scalars)))
step = maps(STEP_KEYS, st.one_of(scalars, resources, context, st.lists(st.sampled_from(["a", "b", "s0", "s1"]), max_size=3)))
doc = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    maps(["workflow", "account", "steps", "on_failure", "partition", "description", 7],
         st.one_of(scalars, st.lists(step, max_size=4))),
)


def check(text: str) -> None:
    try:
        wf = jobspec.loads(text, "fuzz.yaml")
    except SlurmgovError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.yaml")
        return
    try:
        p = planner.plan(wf, DEMO)
    except SlurmgovError as e:
        assert "\n" not in str(e)
        return
    assert p.cost_h >= 0 and set(p.steps) == {s.id for s in wf.steps}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(doc)
def test_random_jobspecs_never_crash(d):
    check(yaml.safe_dump(d, allow_unicode=True))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=300))
def test_random_text_never_crashes(text):
    check(text)


def test_yaml_bombs_and_oddities():
    for text in [
        "a: &a [*a]",  # recursive alias
        "&x [" * 200 + "]" * 200,
        "workflow: !!python/object/apply:os.system ['true']\naccount: a\nsteps: []",
        "? [a, b]\n: c\n",  # a non-string key
        "workflow: w\naccount: a\nsteps:\n  - {id: a, run: x, after: {b: 1}}\n",
        "workflow: w\naccount: a\nsteps:\n  - {id: a, run: x, resources: {gpus: 1e400}}\n",
        "\x00\x01",
    ]:
        check(text)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(maps(["site", "gpu_types", "nodes", "switches", "partitions", "accounts", "nvlink_domains", "ledger"],
            st.one_of(scalars, st.lists(maps(["names", "name", "nodes", "switches", "gpus", "gpu_type", "default_time"],
                                                 scalars), max_size=3),
                      st.dictionaries(st.sampled_from(NASTY), st.one_of(scalars, maps(["memory_gb", "weight",
                                                                                          "budget_gpu_hours", "period"], scalars)), max_size=3))))
def test_random_site_files_never_crash(d):
    from slurmgov.site import yamlfile
    try:
        s = site_mod.parse(yamlfile.load_text(yaml.safe_dump(d, allow_unicode=True), "site.yaml"))
    except SlurmgovError as e:
        assert "\n" not in str(e)
        return
    assert s.topology.nodes
