"""The command line's answers to wrong input: exit code 2 for a wrong command line or
configuration, 1 for work that failed, each with a message naming the problem; a warehouse on
S3 without credentials fails at once instead of waiting on a cloud metadata endpoint."""

import os

from conftest import run_cli


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path):
    wh = str(tmp_path / "wh")
    bad = run_cli("sql", "--warehouse", wh, "--memory-limit", "lots", "-e", "SELECT 1", check=False)
    assert bad.returncode == 2 and "invalid size 'lots'" in bad.stderr, bad.stderr
    failed = run_cli("sql", "--warehouse", wh, "-e", "SELECT 1; SELECT * FROM nope", check=False)
    assert failed.returncode == 1, failed.stderr
    assert "statement 2 failed" in failed.stderr and "table 'streampulse.public.nope' not found" in failed.stderr
    missing = run_cli("sql", "--warehouse", wh, "-f", str(tmp_path / "missing.sql"), check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_config_file_values_are_checked_like_flags(tmp_path):
    wh = str(tmp_path / "wh")
    config = tmp_path / "streampulse.toml"
    config.write_text('spill_compression = "brotli"\n')
    r = run_cli("sql", "--warehouse", wh, "--config", str(config), "-e", "SELECT 1", check=False)
    assert r.returncode == 2 and "--config" in r.stderr and "uncompressed, lz4_frame or zstd" in r.stderr, r.stderr
    config.write_text("no_such_setting = 1\n")
    r = run_cli("sql", "--warehouse", wh, "--config", str(config), "-e", "SELECT 1", check=False)
    assert r.returncode == 2 and "unknown setting 'no_such_setting'" in r.stderr, r.stderr
    # A flag beats the file; the file beats the default.
    config.write_text('memory_limit = "1GiB"\nquery_memory_limit = "2GiB"\n')
    r = run_cli("sql", "--warehouse", wh, "--config", str(config), "-e", "SELECT 1", check=False)
    assert r.returncode == 2 and "query memory limit 2GiB is above the memory limit 1GiB" in r.stderr, r.stderr
    r = run_cli("sql", "--warehouse", wh, "--config", str(config), "--memory-limit", "4GiB", "-e", "SELECT 1")
    assert r.returncode == 0


def test_s3_without_credentials_fails_at_once(tmp_path):
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_WEB_IDENTITY_TOKEN_FILE",
                           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")}
    env["STREAMPULSE_S3_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: a request would hang on retries
    # run_cli's own 300 s timeout would fail the test if the server waited on retries.
    r = run_cli("sql", "--warehouse", "s3://bucket/wh", "-e", "SELECT 1", env=env, check=False)
    assert r.returncode == 2, r.stderr
    assert "no credentials" in r.stderr and "--s3-access-key-id" in r.stderr and "--s3-instance-credentials" in r.stderr
