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
