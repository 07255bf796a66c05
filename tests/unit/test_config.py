
import pytest

from embsvc.config import ConfigError, load_settings, nvidia_gpu_present

BASE = {"API_TOKEN": "secret"}


def test_defaults_follow_the_contract():
    s = load_settings(BASE, env_file=None)
    # DEVICE=auto takes a GPU where the NVIDIA driver shows one, and the GPU host's defaults with it.
    batch, queue = (64, 512) if nvidia_gpu_present() else (8, 50)
    assert (s.batch_size, s.batch_timeout_ms, s.max_queue_size, s.max_tokens, s.max_inputs) == (batch, 100, queue, 8192,
                                                                                                256)
    assert s.max_request_bytes == 8 * 1024 * 1024 and s.request_timeout_s == 120
    assert s.model_name == "BAAI/bge-m3" and s.model_aliases == ("bge-m3",)
    assert s.devices == ("auto",) and s.dtype == "auto"
    assert s.default_return == ("dense", "sparse", "colbert")
    assert (s.log_level, s.log_format) == ("INFO", "json")


@pytest.mark.parametrize("env", [{}, {"API_TOKEN": ""}, {"API_TOKEN": "your_api_token_here"},
                                 {"API_TOKEN": " , "}])
def test_refuses_to_start_without_a_real_token(env):
    with pytest.raises(ConfigError, match="API_TOKEN"):
        load_settings(env, env_file=None)


@pytest.mark.parametrize("name, value", [("BATCH_SIZE", "0"), ("BATCH_SIZE", "eight"), ("DTYPE", "int4"),
                                         ("DEFAULT_RETURN", "dense,bogus"), ("REQUEST_TIMEOUT_S", "-1"),
                                         ("LOG_FORMAT", "xml"), ("READ_TIMEOUT_S", "0"), ("READ_DEADLINE_S", "soon")])
def test_malformed_settings_are_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({**BASE, name: value}, env_file=None)


def test_read_bounds_default_to_a_few_seconds_and_a_minute():
    s = load_settings(BASE, env_file=None)
    assert (s.read_timeout_s, s.read_deadline_s) == (5.0, 60.0)
    assert load_settings({**BASE, "READ_TIMEOUT_S": "1.5"}, env_file=None).read_timeout_s == 1.5


def test_lists_and_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("API_TOKEN=from-file\nDEVICE=cpu,cpu\nDEFAULT_RETURN=sparse, dense\nBATCH_SIZE=3\n")
    s = load_settings({"BATCH_SIZE": "5"}, env_file=str(env_file))
    assert s.api_tokens == ("from-file",)
    assert s.devices == ("cpu", "cpu")
    assert s.default_return == ("dense", "sparse")
    assert s.batch_size == 5  # the environment wins over .env


def test_settings_are_frozen():
    s = load_settings(BASE, env_file=None)
    with pytest.raises(AttributeError):
        s.batch_size = 1
