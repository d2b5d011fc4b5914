from __future__ import annotations

from types import ModuleType

import jobpulse
import jobpulse.testing


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name in dir(jobpulse)
        if not name.startswith("_") and not isinstance(getattr(jobpulse, name), ModuleType)
    }  # submodules (testing, starlette) appear here once something imports them
    assert sorted(jobpulse.__all__) == jobpulse.__all__
    assert set(jobpulse.__all__) - {"__version__"} == public


def test_every_exported_member_is_defined_in_jobpulse() -> None:
    for name in jobpulse.__all__:
        member = getattr(jobpulse, name)
        if name != "__version__":
            assert member.__module__.startswith("jobpulse"), name


def test_testing_module_exports() -> None:
    assert jobpulse.testing.__all__ == ["FakeClock"]
