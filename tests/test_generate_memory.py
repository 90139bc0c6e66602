"""`clipcond generate` refuses a request whose decoded pixels alone exceed the memory this process
may use: n x 3 x H x W x 4 bytes, counted at the boundary, naming the size it counted (the
model's default, a non-square sample_size, --image's); `memory_bytes` honours `ulimit -v`."""

from __future__ import annotations

import resource
from types import SimpleNamespace as NS

import pytest
from PIL import Image

from clipcond.errors import UsageError
from clipcond.pipelines import generate_checks


def _pipe(sample_size):
    return NS(unet=NS(config=NS(sample_size=sample_size)), vae_scale_factor=8)


@pytest.mark.parametrize(
    "sample_size, args, sources, size, lower",
    [
        (4, NS(n=10, height=None, width=48), None, "32 x 48 pixels", "--n, --height or --width"),
        ((6, 4), NS(n=10, height=None, width=None), None, "48 x 32 pixels", "--n, --height or --width"),
        (
            4,
            NS(n=10, height=None, width=None),
            NS(image=Image.new("RGB", (32, 48))),
            "48 x 32 pixels (--image's height x width)",
            "--n or the --image size",
        ),
    ],
    ids=["width", "non-square-sample", "image"],
)
def test_the_memory_refusal_is_exact_at_the_boundary(monkeypatch, sample_size, args, sources, size, lower):
    needed = 10 * 3 * 48 * 32 * 4  # 184,320 bytes
    monkeypatch.setattr(generate_checks, "memory_bytes", lambda: needed)
    generate_checks.check_memory(args, _pipe(sample_size), sources)  # exactly enough: no error
    monkeypatch.setattr(generate_checks, "memory_bytes", lambda: needed - 1)
    with pytest.raises(UsageError) as refused:
        generate_checks.check_memory(args, _pipe(sample_size), sources)
    gib = f"{needed / 2**30:.3g}"
    assert str(refused.value) == (
        f"--n 10 image(s) of {size} need at least {gib} GiB for their decoded pixels alone, "
        f"more than the {(needed - 1) / 2**30:.3g} GiB of memory this process may use; lower {lower}"
    )


def test_memory_bytes_honours_ulimit_v(monkeypatch):
    unlimited = generate_checks.memory_bytes()
    assert 2**20 < unlimited < 2**63
    monkeypatch.setattr(resource, "getrlimit", lambda which: (12345678, resource.RLIM_INFINITY))
    assert generate_checks.memory_bytes() == 12345678
