"""The app over HTTP: start on a free port, drive endpoints with gradio_client."""
import pytest
from gradio_client import Client

from studio import decoding, models


@pytest.fixture(scope="module")
def client(app_url, tiny_char_checkpoint):
    return Client(app_url, verbose=False)


def test_generate_endpoint_returns_text(client, tiny_char_checkpoint):
    prompt = "Human: What is 2 plus 3?"
    text = client.predict(tiny_char_checkpoint, prompt, 8, "cpu", 0, api_name="/generate")
    # the model's own decoding defaults with 8 new tokens, seeded: exactly what the engine generates
    settings = models.default_decoding(tiny_char_checkpoint).with_(max_new_tokens=8)
    expected = decoding.generate(models.load(tiny_char_checkpoint, device="cpu"), prompt, [settings])[0]
    assert len(expected.tokens) == 8 and text == expected.text


def test_load_and_describe_endpoints(client, tiny_char_checkpoint):
    status = client.predict(tiny_char_checkpoint, "cpu", 0, api_name="/load_model")
    assert status.startswith(f"{tiny_char_checkpoint} loaded on cpu")
    md = client.predict("v2", api_name="/describe")
    assert "11.45M parameters" in md and "| 4 | 192 | 6 | 768 | 128 |" in md


def test_bad_model_is_a_clear_error(client):
    with pytest.raises(Exception, match="model 'nope' not found"):
        client.predict("nope", "cpu", 0, api_name="/load_model")
