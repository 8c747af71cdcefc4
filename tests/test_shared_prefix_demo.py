"""The shared-prefix demo step: sharing saves blocks, and the kernels agree with the reference."""


import pytest
from helpers import import_kernels

torch, _ = import_kernels("the demo tests")


from slurmgov.context.shared_prefix_demo import run  # noqa: E402

pytestmark = pytest.mark.kernels


def check_accounting(res, branches=4, prefix=72, decode=8, block=16, kv_heads=2, head_dim=16,
                     elem=4, prefix_tol=1e-4):
    assert res["branches"] == branches and res["tokens_decoded"] == branches * decode
    assert res["bytes_per_block"] == 2 * 1 * kv_heads * head_dim * block * elem  # 1 layer
    assert res["blocks_saved"] > 0
    assert res["bytes_saved"] == res["blocks_saved"] * res["bytes_per_block"]
    assert res["blocks_saved"] == res["blocks_without_sharing"] - res["blocks_used"]
    per_branch = -(-(prefix + decode) // block)
    late = -(-prefix // block)
    assert res["blocks_without_sharing"] == branches * per_branch + late
    shared_full = prefix // block
    # Shared full prefix blocks + one private last block per branch + the late tail block.
    assert res["blocks_used"] == shared_full + branches + 1
    assert res["prefix_hit_blocks"] == shared_full
    assert res["prefix_hit_tokens"] == shared_full * block
    assert res["cow_copies"] == branches - 1  # the last holder writes in place
    assert res["leaked_blocks"] == 0
    assert res["kv_block_seconds"] > 0
    # The late joiner's cached-prefix result equals the original prefill.
    assert res["prefix_check_max_err"] < prefix_tol


def test_demo_kernels_path():
    res = run({})
    want = "triton-gpu" if torch.cuda.is_available() else "triton-interpreter"
    assert res["path"] == want, res.get("reason")
    check_accounting(res)
    assert res["kernel_vs_reference_max_err"] < 1e-4


@pytest.mark.parametrize("path", ["auto", "torch-reference"])
def test_demo_fp8_cache_meters_blocks_at_their_real_size(path):
    # An fp8 cache: 1 byte an element, so a quarter of the fp32 bytes per block, saved and
    # metered; the same blocks; the late joiner's logits within fp8's rounding of the prefill.
    res = run({}, path=path, branches=3, decode_tokens=4, kv_cache="fp8")
    assert res["kv_cache_dtype"] == "float8_e4m3fn"
    check_accounting(res, branches=3, decode=4, elem=1, prefix_tol=0.1)
    assert res["kernel_vs_reference_max_err"] < 1e-4


def test_demo_reference_path_same_accounting():
    res = run({}, path="torch-reference", branches=3, decode_tokens=4)
    assert res["path"] == "torch-reference"
    check_accounting(res, branches=3, decode=4)


@pytest.mark.kernels
def test_shared_prefix_jobspec_runs_and_reports_the_saving(root):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "slurmgov"
    p = subprocess.run([str(exe), "run", str(root / "jobspecs" / "shared-prefix-agents.yaml")],
                       capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("context: decode-branches"))
    assert "16 blocks (65,536 bytes) saved by sharing" in line and "triton-" in line
