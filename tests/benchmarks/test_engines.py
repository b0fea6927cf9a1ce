"""The S3 engines of benchmarks/engines.py, started for real: multipart, restart, two at once."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError

from benchmarks.engines import SeaweedFS, free_ports

MIB = 1 << 20


def _upload_two_parts(client: Any, bucket: str, key: str) -> tuple[str, list[bytes]]:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [bytes([1]) * 5 * MIB, bytes([2]) * 1000]
    for number, body in enumerate(parts, 1):
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)
    return upload, parts


def _complete(client: Any, bucket: str, key: str, upload: str) -> None:
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload)["Parts"]
    done = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in listed]
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
    )


def test_multipart_upload_list_parts_and_complete(
    s3_engine: SeaweedFS, s3_client: Any, s3_prefix: str
) -> None:
    client, bucket, key = s3_client, s3_engine.bucket, f"{s3_prefix}file"
    upload, parts = _upload_two_parts(client, bucket, key)
    listed = client.list_parts(Bucket=bucket, Key=key, UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 5 * MIB), (2, 1000)]
    assert [p["ETag"].strip('"') for p in listed] == [hashlib.md5(b).hexdigest() for b in parts]
    _complete(client, bucket, key, upload)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)
    with pytest.raises(ClientError, match="NoSuchUpload"):
        client.list_parts(Bucket=bucket, Key=key, UploadId=upload)


def test_each_test_has_its_own_bucket(s3_engine: SeaweedFS, s3_client: Any, s3_bucket: str) -> None:
    client = s3_client
    assert client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert s3_bucket != s3_engine.bucket


@pytest.mark.parametrize("crash", [False, True], ids=["stop", "kill"])
def test_restart_keeps_objects_and_uploads_in_progress(
    s3_private_engine: SeaweedFS, crash: bool
) -> None:
    engine, bucket = s3_private_engine, s3_private_engine.bucket
    # Closed, not left to the collector with a connection open (it warns, failing a test).
    with (
        contextlib.closing(engine.client()) as client,
        contextlib.closing(engine.client(retries={"max_attempts": 1})) as once,
    ):
        client.put_object(Bucket=bucket, Key="whole", Body=b"kept")
        upload, parts = _upload_two_parts(client, bucket, "parts")
        endpoint = engine.endpoint
        engine.kill() if crash else engine.stop()
        with pytest.raises(Exception):  # noqa: B017 - refused connection, whichever botocore names
            once.head_bucket(Bucket=bucket)
        engine.start()
        assert engine.endpoint == endpoint
        assert client.get_object(Bucket=bucket, Key="whole")["Body"].read() == b"kept"
        _complete(client, bucket, "parts", upload)
        assert client.get_object(Bucket=bucket, Key="parts")["Body"].read() == b"".join(parts)


def test_two_engines_run_at_once(s3_engine: SeaweedFS, s3_private_engine: SeaweedFS) -> None:
    assert not set(s3_engine.ports.values()) & set(s3_private_engine.ports.values())
    with contextlib.ExitStack() as closed:  # clients closed, not left to the collector
        engines = [
            (e, closed.enter_context(contextlib.closing(e.client())))
            for e in (s3_engine, s3_private_engine)
        ]
        for engine, client in engines:
            client.put_object(Bucket=engine.bucket, Key="two-engines", Body=engine.endpoint)
        for engine, client in engines:
            body = client.get_object(Bucket=engine.bucket, Key="two-engines")["Body"].read()
            assert body == engine.endpoint.encode()


def test_weed_listens_on_loopback_and_chosen_ports_only(s3_engine: SeaweedFS) -> None:
    (daemon,) = s3_engine.daemons
    listening = {
        conn.laddr
        for conn in psutil.Process(daemon.proc.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} <= set(s3_engine.ports.values())


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
