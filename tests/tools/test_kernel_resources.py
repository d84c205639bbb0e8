"""``tools/kernel_resources.py``: the attention kernels compile for sm_90 on a machine without a GPU, and the
script reports their registers, spills and shared memory (one variant and its exact NaN pass here; the tool
itself runs all of them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_one_variant_compiles_for_sm90_and_reports_its_resources(tmp_path):
    pytest.importorskip('triton.knobs', reason='the tool needs Triton >= 3.4')
    out = tmp_path / 'res.json'
    r = subprocess.run([sys.executable, str(ROOT / 'tools/kernel_resources.py'), str(ROOT), '--only',
                        'fwd interval D32 bf16', '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())
    # the forward and its exact NaN pass (docs/design.md, "NaN and inf"): two variants of one kernel
    assert [r['name'].split(' m')[0] for r in rows] == ['fwd interval D32 bf16', 'exact-fwd interval D32 bf16'], rows
    for row in rows:
        assert row['ok'], row
        assert 16 <= row['regs'] <= 255 and row['spill_st'] >= 0 and row['spill_ld'] >= 0 and row['shared'] > 0, row
        # the key-block loop was found and its loads are asynchronous copies (interval: no table feeds the addresses)
        assert row['inflight'] >= 0 and row['sync_loads'] == 0, row


def test_pipelining_reads_the_wait_depth_and_sync_loads_of_the_dot_loop():
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        from kernel_resources import _pipelining
    finally:
        sys.path.pop(0)
    ir = ('%n = tt.load %p : tensor<8x!tt.ptr<i32>>\n'                     # before any loop: not counted
          'scf.for %i = %a to %b step %c {\n %x = tt.load %q : tensor<8x!tt.ptr<i32>>\n}\n'   # no dot: not the walk
          'scf.for %j = %a to %b step %c {\n %w = ttg.async_wait %t {num = 3 : i32}\n'
          ' %r = tt.load %rp, %m : tensor<32x!tt.ptr<i32>>\n %e = tt.load %ep : !tt.ptr<i32>\n'
          ' %d = ttng.warp_group_dot %u, %v\n %w2 = ttg.async_wait %t {num = 0 : i32}\n}\n')
    assert _pipelining(ir) == (3, 1)          # the scalar entry load is not a tensor load
    assert _pipelining('no loop here') == (-1, -1)
