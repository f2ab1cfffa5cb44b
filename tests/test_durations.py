import pytest
from pydantic import BaseModel, ValidationError

from harness.durations import Seconds, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5), (7, 7.0), ("12", 12.0), ("1h", 3600.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-1s", "10 parsecs", True, -3])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_seconds_field_names_the_bad_value():
    class Step(BaseModel):
        within: Seconds

    assert Step(within="250ms").within == 0.25
    with pytest.raises(ValidationError, match="not a duration: 'later'"):
        Step(within="later")
