"""Playground tab pieces and its `compare` / `sweep` endpoints through gradio_client."""
import json
from pathlib import Path

import pytest
from gradio_client import Client

from studio import decoding
from studio.config import settings_of
from studio.sampling import DecodingSettings
from studio.ui import playground


@pytest.fixture(scope="module")
def client(app_url, tiny_char_checkpoint):
    return Client(app_url, verbose=False)


def panel(s: DecodingSettings) -> list:
    """A decoding panel's values, as the API takes them: the settings shown on forms, in field order."""
    return [getattr(s, f.name) for f in settings_of(DecodingSettings, "ui")]


def test_compare_endpoint_streams_two_columns_and_exports(client, tiny_char_checkpoint):
    cols = [DecodingSettings(temperature=0, max_new_tokens=8), DecodingSettings(top_k=5, max_new_tokens=8, seed=2)]
    values = panel(cols[0]) + panel(cols[1]) + panel(DecodingSettings()) * 4
    out = client.predict(tiny_char_checkpoint, "Human: hi", 2, *values, api_name="/compare")
    views, stats, files = out[:6], out[6:12], out[12]
    assert all('class="tok"' in v for v in views[:2]) and views[2:] == ("",) * 4
    assert "tok/s" in stats[0] and "distinct-1" in stats[1]
    paths = sorted((Path(f) for f in files), key=lambda p: p.name)
    assert [p.name for p in paths] == ["comparison.csv", "comparison.json"]
    data = json.loads(paths[1].read_text())
    assert [c["settings"]["temperature"] for c in data["columns"]] == [0.0, 1.0]


def test_sweep_endpoint_reports_a_bad_value(client, tiny_char_checkpoint):
    with pytest.raises(Exception, match=r"top_p must be in \(0, 1\], got 2.0"):
        client.predict(tiny_char_checkpoint, "Human: hi", "top_p", "0.5, 2", *panel(DecodingSettings()),
                       api_name="/sweep")


def test_sweep_endpoint(client, tiny_char_checkpoint):
    fig, table = client.predict(tiny_char_checkpoint, "Human: hi", "temperature", "0.2, 1.0",
                                *panel(DecodingSettings(max_new_tokens=5)), api_name="/sweep")
    assert [row[0] for row in table["data"]] == [0.2, 1.0]


def test_token_html_escapes_and_shows_alternatives():
    col = decoding.Column(DecodingSettings(), tokens=[decoding.TokenInfo(1, "<b>", 0.25, [("<b>", 0.25), ("x", 0.2)])])
    out = playground.token_html(col)
    assert "&lt;b&gt;" in out and "<b>" not in out and "p=0.250" in out and "&#x27;x&#x27; 0.200" in out
