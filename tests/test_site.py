import pytest

from slurmgov.errors import InputError
from slurmgov.site import model as site_mod
from slurmgov.site import yamlfile

SITES = ["local", "demo-cluster", "large-fat-tree"]


@pytest.mark.parametrize("name", SITES)
def test_shipped_sites_load(root, name):
    s = site_mod.load(root / "site_configs" / f"{name}.yaml")
    assert s.accounts and s.topology.nodes


def test_demo_cluster_has_the_test_cluster_shape(root):
    s = site_mod.load(root / "site_configs" / "demo-cluster.yaml")
    t = s.topology
    assert sorted(t.nodes) == ["gpu01", "gpu02", "gpu03", "gpu04"]
    assert all(n.gpus == 4 and n.gpu_type == "h100" for n in t.nodes.values())
    assert t.leaf_of("gpu02") == t.leaf_of("gpu01") != t.leaf_of("gpu03")
    assert t.locality(["gpu01", "gpu02"]) == "leaf-switch"
    assert t.locality(["gpu02", "gpu03"]) == "any"
    assert t.locality(["gpu03"]) == "node"


def test_large_site_shape(root):
    s = site_mod.load(root / "site_configs" / "large-fat-tree.yaml")
    t = s.topology
    assert len(t.nodes) == 512 and all(n.gpus == 8 for n in t.nodes.values())
    assert len(t.leaves) == 32 and t.domain_gpus("h100", "h100") == 8
    assert s.weight("h200") == 1.4 and s.weight(None) == 1.4  # untyped: priced at the dearest type


def test_multi_node_nvlink_domain():
    doc = yamlfile.load_text(site_text("nvlink_domains:\n  - {name: nvl1, nodes: 'n[1-2]'}\n"), "s.yaml")
    t = site_mod.parse(doc).topology
    assert t.domain_of("n1") == t.domain_of("n2") == "nvl1" and t.domain_of("n3") == "n3"
    assert t.domain_gpus("p", "h100") == 8 and t.locality(["n1", "n2"]) == "nvlink-domain"


PARTS = {
    "nodes": '  - {names: "n[1-4]", gpus: 4, gpu_type: h100}',
    "switches": '  - {name: l1, nodes: "n[1-2]"}',
    "partitions": '  - {name: p, nodes: "n[1-4]"}',
}


def site_text(extra="", **parts):
    body = "site: s\ngpu_types: {h100: {memory_gb: 80}}\n"
    for key, default in PARTS.items():
        body += f"{key}:\n{parts.get(key, default)}\n"
    return body + extra


SITE = site_text()


@pytest.mark.parametrize("parts,fragment", [
    (dict(extra="colour: blue\n"), "s.yaml:9: colour: unknown key"),
    (dict(nodes="  - {names: x1, gpus: 2, gpu_type: a100}"), "nodes[x1]: gpu_type: 'a100' is not in gpu_types"),
    (dict(switches="  - {name: l9, nodes: 'zz[1-2]'}"), "s.yaml:6: switches[l9]: nodes: unknown node zz1"),
    (dict(switches="  - {name: l9, nodes: 'n[1-2'}"), "bad hostlist"),
    (dict(switches="  - {name: l9, nodes: ''}"), "s.yaml:6: switches[l9]: empty hostlist ''"),  # was a TypeError
    (dict(switches="  - {name: l1, nodes: n1}\n  - {name: l2, nodes: n1}"), "switches[l2]: nodes: node n1 is already under leaf switch l1"),
    (dict(partitions="  - {name: a, nodes: n1, default: true}\n  - {name: b, nodes: n2, default: true}"),
     "partitions[b]: default: more than one partition is marked default"),
    (dict(extra="accounts: {chem-ai: {budget_gpu_hours: -5}}\n"), "accounts.chem-ai.budget_gpu_hours"),
    (dict(extra="fail_policy: maybe\n"), "fail_policy"),
    (dict(extra="accounts: {PHYSICS: {budget_gpu_hours: 5}}\n"),
     "'PHYSICS': Slurm account names are lower case; write 'physics'"),
    (dict(partitions="  - {name: a, nodes: n1, default_time: forever}"), "partitions[a]: default_time: not a Slurm time limit"),
    # topology/block: what slurmctld itself would refuse, said with the site file's line
    (dict(extra="block_sizes: [2]\n"), "s.yaml:9: block_sizes: block sizes are for nvlink_blocks: true"),
    (dict(extra="nvlink_blocks: true\n"), "s.yaml:9: nvlink_blocks: no nvlink_domains"),
    (dict(extra="nvlink_blocks: true\nblock_sizes: [2, 2]\nnvlink_domains:\n  - {name: b1, nodes: 'n[1-2]'}\n"),
     "block_sizes: [2, 2]: sizes in nodes, each larger than the one before"),
    (dict(extra="nvlink_blocks: true\nblock_sizes: [0]\nnvlink_domains:\n  - {name: b1, nodes: 'n[1-2]'}\n"),
     "block_sizes: [0]: sizes in nodes"),
    (dict(extra="nvlink_blocks: true\nblock_sizes: [2]\nnvlink_domains:\n  - {name: b1, nodes: 'n[1-2]'}\n"
                "  - {name: b2, nodes: n3}\n"),
     "s.yaml:13: nvlink_domains[b2]: nodes: block b2 has 1 nodes, fewer than the base block size 2"),
])
def test_bad_site_files(parts, fragment):
    with pytest.raises(InputError) as exc:
        site_mod.parse(yamlfile.load_text(site_text(**parts), "s.yaml"))
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_home_defaults_to_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURMGOV_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert site_mod.slurmgov_home() == tmp_path / "slurmgov"
    s = site_mod.parse(yamlfile.load_text(SITE, "s.yaml"))
    assert s.ledger_url() == f"sqlite:///{tmp_path}/slurmgov/ledger.sqlite"
