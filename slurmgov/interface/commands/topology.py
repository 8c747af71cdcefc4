"""`slurmgov topology show|placement|fragmentation|import`: the site's shape and how jobs land on it."""

from __future__ import annotations

import click
import hostlist

from slurmgov.interface import report
from slurmgov.interface.commands.common import (
    _json,
    _placement_log,
    _site,
    _utc,
    conf_dir_option,
    err,
    format_option,
    json_option,
    out,
    site_option,
)
from slurmgov.interface.tables import Table, show
from slurmgov.slurm import placement


@click.group()
def topology():
    """The site's shape: nodes, NVLink domains, the switch tree."""


@topology.command("show")
@site_option
@json_option
@format_option
@click.option("--live", is_flag=True, help="Free slots as Slurm has them now (sinfo), not an empty cluster.")
def topology_show(site_path, as_json, fmt, live):
    """Show leaf switches, their nodes and GPUs, and the free N-GPU slots per leaf and domain.

    \b
    Examples:
      slurmgov topology show --site site_configs/demo-cluster.yaml
      slurmgov topology show --live --json
    """
    from slurmgov.slurm.placement import fragmentation

    site = _site(site_path)
    topo = site.topology
    frag = fragmentation(site, placement.sample(site).busy if live else {})
    doc: dict = {  # the --json document, and what the table shows
        "site": site.site,
        "nodes": len(topo.nodes), "gpus": sum(n.gpus for n in topo.nodes.values()),
        "leaf_switches": {name: {"nodes": hostlist.collect_hostlist(members),
                                 "gpus": sum(topo.nodes[n].gpus for n in members)}
                          for name, members in topo.leaves.items()},
        "upper_switches": {name: children for name, children in topo.uppers.items()},
        "nvlink_domains": {d: len(m) for d, m in topo.domains.items() if len(m) > 1},
        "free_slots": frag,
    }
    if as_json:
        _json(doc)
        return
    t = Table(title=f"site {site.site}: {doc['nodes']} nodes, {doc['gpus']} GPUs")
    for col in ("switch", "nodes", "GPUs", "free 1/2/4/8-GPU slots"):
        t.add_column(col)
    leaves = frag.get("leaf_switches", {})
    for name, info in doc["leaf_switches"].items():
        slots = leaves.get(name, {}).get("slots", {})
        t.add_row(name, info["nodes"], str(info["gpus"]), "/".join(str(slots.get(k, 0)) for k in (1, 2, 4, 8)))
    for name, children in doc["upper_switches"].items():
        t.add_row(name, "switches: " + ", ".join(children), "", "")
    show(t, out, fmt)
    if doc["nvlink_domains"] and fmt == "table":
        out.print("multi-node NVLink domains: " + ", ".join(f"{d} ({n} nodes)" for d, n in doc["nvlink_domains"].items()))


def _samples_window(fn):
    """--since/--until for the commands that read the governor's placement samples."""
    fn = click.option("--until", type=click.DateTime(), default=None, help="Samples taken before (UTC).")(fn)
    return click.option("--since", type=click.DateTime(), default=None, help="Samples taken at or after (UTC).")(fn)


def _samples(site, since, until) -> list:
    return placement.PlacementLog(_placement_log(site)).read(_utc(since), _utc(until))


@topology.command("placement")
@site_option
@json_option
@format_option
@_samples_window
def topology_placement(site_path, as_json, fmt, since, until):
    """The share of GPU jobs that got the locality they asked for (node, NVLink domain, leaf
    switch), from what the governor recorded of running jobs.

    \b
    Examples:
      slurmgov topology placement
      slurmgov topology placement --since 2026-11-01 --json
    """
    site = _site(site_path)
    rep = placement.placement(site, _samples(site, since, until))
    if as_json:
        _json(rep)
        return
    report.placement_table(rep, out, fmt)


@topology.command("fragmentation")
@site_option
@json_option
@format_option
@_samples_window
def topology_fragmentation(site_path, as_json, fmt, since, until):
    """Free N-GPU slots per leaf switch: now, and the minimum and mean over the recorded samples.

    \b
    Examples:
      slurmgov topology fragmentation
      slurmgov topology fragmentation --since 2026-11-24 --json
    """
    site = _site(site_path)
    rep = placement.fragmentation_over_time(site, _samples(site, since, until))
    if as_json:
        _json(rep)
        return
    report.fragmentation_table(rep, out, fmt)


@topology.command("import")
@conf_dir_option
@click.option("--name", default=None, help="Site name (default: ClusterName).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write the site file here.")
def topology_import(conf_dir, name, output):
    """Write a site file from slurm.conf, gres.conf and topology.conf (accounts to be filled in).

    \b
    Example:
      slurmgov topology import --slurm-conf-dir /etc/slurm -o site_configs/my-site.yaml
    """
    from slurmgov.slurm.conf_import import import_site, to_yaml

    doc, warnings = import_site(conf_dir, site_name=name)
    text = to_yaml(doc, warnings)
    for w in warnings:
        err.print(f"warning: {w}")
    if output:
        report.write_output(output, text)
        err.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)
