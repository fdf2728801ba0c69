"""The same catalog scenario with the warehouse on S3, against a local S3-compatible server
(moto) started by the test."""

from catalog_checks import bad_csv, run_scenario
from conftest import BUCKET


def test_catalog_on_s3_survives_sigkill(s3, tmp_path):
    endpoint, client = s3
    client.put_object(Bucket=BUCKET, Key="landing/year=2026/month=1/a.csv", Body=b"id,name\n1,a\n2,b\n")
    client.put_object(Bucket=BUCKET, Key="landing/year=2026/month=2/b.csv", Body=b"id,name\n3,c\n")
    client.put_object(Bucket=BUCKET, Key="bad/bad.csv", Body=bad_csv())
    env = {
        "STREAMPULSE_S3_ENDPOINT": endpoint,
        "STREAMPULSE_S3_REGION": "us-east-1",
        "STREAMPULSE_S3_ACCESS_KEY_ID": "test",
        "STREAMPULSE_S3_SECRET_ACCESS_KEY": "test",
        "STREAMPULSE_S3_ALLOW_HTTP": "true",
    }

    def keys(prefix):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    def delta_commits(table):
        return sorted(k for k in keys("wh/keep/") if f"/{table}-" in k and "/_delta_log/" in k and k.endswith(".json"))

    run_scenario(f"s3://{BUCKET}/wh", f"s3://{BUCKET}/landing/", f"s3://{BUCKET}/bad/", delta_commits,
                 str(tmp_path / "server.log"), env=env)
    catalog_versions = [k for k in keys("wh/_catalog/")]
    assert len(catalog_versions) >= 8, catalog_versions
    assert any("/play_date=2026-11-01/" in k for k in keys("wh/keep/"))
    assert not any("/plays_copy-" in k for k in keys("wh/keep/"))
