"""The fixed sample of tests/mutation.py (`--every K`): every K-th of mutmut's sorted mutant names,
the same whichever order they come in."""

from __future__ import annotations

import mutation
import pytest


def test_the_sample_is_every_kth_sorted_name_whatever_the_order():
    names = [f"m.x_f__mutmut_{index}" for index in range(1, 12)]
    # sorted as text: 1, 10, 11, 2, 3, ...
    expected = ["m.x_f__mutmut_1", "m.x_f__mutmut_2", "m.x_f__mutmut_5", "m.x_f__mutmut_8"]
    assert mutation.sample(names, 3) == expected
    assert mutation.sample(list(reversed(names)), 3) == expected
    assert mutation.sample(names, 1) == sorted(names)


@pytest.mark.parametrize("every", [0, -2, 1.5])
def test_a_sample_step_below_one_is_refused(every):
    with pytest.raises(ValueError, match=rf"`every` must be a whole number >= 1, got {every!r}"):
        mutation.sample(["a"], every)


def test_only_and_every_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="give `only` or `every`, not both"):
        mutation.run("clipcond/cache.py", tmp_path, only="*", every=2)
    assert not any(tmp_path.iterdir())  # refused before staging anything
