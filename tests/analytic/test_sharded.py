import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from analytic import data_mesh, gram_init, gram_update, sharded_gram_update

from .helpers import stream

_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from analytic import data_mesh, gram_init, gram_update, sharded_gram_update
    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1003, 48)); y = rng.integers(0, 7, 1003)
    mesh = data_mesh()
    sharded, single = gram_init(48), gram_init(48)
    for part in np.array_split(np.arange(1003), 3):
        sharded = sharded_gram_update(sharded, x[part], y[part], mesh)
        single = gram_update(single, x[part], y[part])
    scale = float(np.abs(single.xtx).max())
    print(json.dumps({"devices": len(mesh.devices.ravel()),
                      "xtx": float(np.abs(sharded.xtx - single.xtx).max()) / scale,
                      "xty": float(np.abs(sharded.xty - single.xty).max()) / float(np.abs(single.xty).max()),
                      "count": int(sharded.count)}))
""")


def test_sharded_accumulation_over_4_host_devices_equals_single_device():
    # Forcing 4 CPU devices must happen before JAX initializes its backend, hence a fresh process.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 4 and res["count"] == 1003
    # Only the summation order differs (4 partial sums then psum): 1e-12 relative to the largest entry.
    assert res["xtx"] < 1e-12 and res["xty"] < 1e-12


def test_sharded_update_on_one_device_pads_rows_exactly():
    x, y = stream(3, n=101, d=8, classes=3)
    a = sharded_gram_update(gram_init(8), x, y, data_mesh())
    b = gram_update(gram_init(8), x, y)
    np.testing.assert_allclose(a.xtx, b.xtx, rtol=1e-13)
    np.testing.assert_allclose(a.xty, b.xty, rtol=1e-13, atol=1e-13)
    assert int(a.count) == 101
