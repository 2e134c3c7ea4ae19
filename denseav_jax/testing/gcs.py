"""A local Google Cloud Storage for tests: the `gcp-storage-emulator` server in a child
process, behind a proxy that fills in what the emulator leaves out of GCS's answers and
that can answer some requests with a transient error.

    with gcs.Emulator(bucket='runs', fail_every=7) as emu:
      env = emu.env()          # For child processes (STORAGE_EMULATOR_HOST, ...).
      emu.activate()           # The same in this process.
      workdir = emu.url('run1')  # gs://runs/run1

Every client the project uses reads the endpoint from the environment: gcsfs (etils.epath,
Orbax's directory operations) and google-cloud-storage (tensorboardX) from
STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) from TENSORSTORE_GCS_HTTP_URL. A fixed
token stands in for credentials. The proxy adds the `x-goog-generation` header GCS sends with
every download (TensorStore reads it; the emulator omits it), and answers every `fail_every`-th request with
503 Service Unavailable *before* forwarding it (nothing happens on the server), which every
one of those clients retries - so a run through it must give the same files as without it.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f'gcp-storage-emulator exited with {proc.returncode} on start')
    with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), 0.5):
      return
    time.sleep(0.1)
  raise TimeoutError(f'gcp-storage-emulator did not listen on port {port} in {timeout:.0f} s')


class _FlakyProxy(http.server.ThreadingHTTPServer):
  """Forwards every request to the emulator; every `fail_every`-th one gets a 503."""

  daemon_threads = True

  def __init__(self, upstream_port: int, fail_every: int):
    self.upstream_port, self.fail_every = upstream_port, fail_every
    self.count, self.failed = 0, 0
    self.lock = threading.Lock()
    super().__init__(('127.0.0.1', 0), _ProxyHandler)

  def handle_error(self, request, client_address):
    """A client that hung up (a cancelled read) is not an error worth a traceback."""
    if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
      super().handle_error(request, client_address)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'

  def log_message(self, *args):  # Quiet.
    del args

  def _relay(self):
    server: _FlakyProxy = self.server  # type: ignore[assignment]
    length = int(self.headers.get('Content-Length') or 0)
    body = self.rfile.read(length) if length else None
    with server.lock:
      server.count += 1
      fail = server.fail_every and server.count % server.fail_every == 0
      server.failed += bool(fail)
    if fail:
      payload = b'{"error": {"code": 503, "message": "transient (test proxy)"}}'
      self.send_response(503)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(payload)))
      self.end_headers()
      self.wfile.write(payload)
      return
    headers = {k: v for k, v in self.headers.items()
               if k.lower() not in ('host', 'connection', 'content-length')}
    conn = http.client.HTTPConnection('127.0.0.1', server.upstream_port, timeout=60)
    try:
      conn.request(self.command, self.path, body=body, headers=headers)
      resp = conn.getresponse()
      data = resp.read()
      self.send_response(resp.status)
      sent = set()
      for k, v in resp.getheaders():
        if k.lower() not in ('transfer-encoding', 'connection', 'content-length', 'server',
                             'date'):
          self.send_header(k, v)
          sent.add(k.lower())
      if (self.command == 'GET' and 'alt=media' in self.path and resp.status in (200, 206)
          and 'x-goog-generation' not in sent):
        generation = self._generation(server.upstream_port)
        if generation:
          self.send_header('x-goog-generation', generation)
          self.send_header('x-goog-metageneration', '1')
      self.send_header('Content-Length', str(len(data)))
      self.end_headers()
      if self.command != 'HEAD':
        self.wfile.write(data)
    finally:
      conn.close()

  def _generation(self, port: int) -> str:
    """The object's generation, which GCS sends with every download (x-goog-generation)
    and TensorStore requires; the emulator leaves the header out."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    try:
      conn.request('GET', self.path.split('?', 1)[0])
      resp = conn.getresponse()
      data = resp.read()
      return str(json.loads(data).get('generation', '')) if resp.status == 200 else ''
    except (OSError, ValueError):
      return ''
    finally:
      conn.close()

  do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _relay


class Emulator:
  """The emulator (and the proxy when `fail_every`); see the module doc."""

  def __init__(self, bucket: str = 'denseav-test', fail_every: int = 0):
    self.bucket, self.fail_every = bucket, int(fail_every)
    self._proc: subprocess.Popen | None = None
    self._proxy: _FlakyProxy | None = None
    self._saved_env: dict[str, str | None] = {}
    self.port = 0

  def __enter__(self) -> 'Emulator':
    port = free_port()
    self._proc = subprocess.Popen(
        [sys.executable, '-m', 'gcp_storage_emulator', 'start', '--host', '127.0.0.1',
         '--port', str(port), '--default-bucket', self.bucket, '--in-memory', '--quiet'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_port(port, self._proc)
    self._proxy = _FlakyProxy(port, self.fail_every)
    threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
    self.port = self._proxy.server_address[1]
    return self

  def __exit__(self, *exc):
    self.deactivate()
    if self._proxy is not None:
      self._proxy.shutdown()
      self._proxy.server_close()
    if self._proc is not None:
      self._proc.terminate()
      try:
        self._proc.wait(10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()

  @property
  def failed_requests(self) -> int:
    """How many requests the proxy answered with a 503 so far."""
    return self._proxy.failed if self._proxy is not None else 0

  def url(self, *parts: str) -> str:
    return '/'.join([f'gs://{self.bucket}', *parts])

  def env(self) -> dict[str, str]:
    endpoint = f'http://127.0.0.1:{self.port}'
    return {'STORAGE_EMULATOR_HOST': endpoint, 'TENSORSTORE_GCS_HTTP_URL': endpoint,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token', 'GOOGLE_CLOUD_PROJECT': 'test'}

  def activate(self) -> None:
    """Points this process's clients at the emulator (undone on exit)."""
    for k, v in self.env().items():
      self._saved_env.setdefault(k, os.environ.get(k))
      os.environ[k] = v
    _forget_cached_filesystems()

  def deactivate(self) -> None:
    for k, v in self._saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    self._saved_env = {}
    _forget_cached_filesystems()


def _forget_cached_filesystems() -> None:
  """fsspec caches filesystem objects (with their endpoint): a new endpoint needs new ones."""
  with contextlib.suppress(ImportError):
    import fsspec  # pylint: disable=g-import-not-at-top
    for cls in list(fsspec.registry.values()) if hasattr(fsspec, 'registry') else []:
      with contextlib.suppress(Exception):
        cls.clear_instance_cache()
    with contextlib.suppress(Exception):
      import gcsfs  # pylint: disable=g-import-not-at-top
      gcsfs.GCSFileSystem.clear_instance_cache()
