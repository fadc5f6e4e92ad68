"""Opening a page in the distribution's headless Chromium over the DevTools protocol, stdlib only.

Chromium is started with `--remote-debugging-pipe`: it reads protocol commands from its file
descriptor 3 and writes replies and events to its descriptor 4, each message a JSON object ended
by a NUL byte. `open_pages(urls)` loads pages with the network off (offline emulation, every host
unresolvable, a dead proxy) and returns what a test checks: the errors the page raised or logged,
every request it made, its images' decoded widths, its sections, its numbers and a screenshot.
"""

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

# Runs argv[3:] with the descriptors argv[1] and argv[2] as 3 and 4 (both above 9: no clash).
PIPE_WRAPPER = ('import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); '
                'os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); '
                'os.execv(sys.argv[3], sys.argv[3:])')

# What the page reports about itself once loaded (one JSON string, by value).
PAGE_FACTS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
                                                 naturalWidth: i.naturalWidth})),
  sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
  nums: Array.from(document.querySelectorAll('.num')).map(n => [n.dataset.src, n.textContent]),
  alert: (document.getElementById('masking-alert') || {}).textContent || null,
  alertFirst: document.body.firstElementChild ?
      document.body.firstElementChild.id === 'masking-alert' : false,
  scripts: document.scripts.length,
  height: document.documentElement.scrollHeight,
})"""


def find_chromium() -> str | None:
  """The distribution's Chromium, or None."""
  for name in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable'):
    path = shutil.which(name)
    if path:
      return path
  return None


class DevTools:
  """A headless Chromium and its protocol pipe; always `close()` it (kills the browser)."""

  def __init__(self, executable: str, timeout: float = 60.0):
    self.timeout = timeout
    self.user_dir = tempfile.mkdtemp(prefix='robust_med_chromium_')
    to_browser_r, self._to_browser = os.pipe()
    self._from_browser, from_browser_w = os.pipe()
    # Out of the way of descriptors 3 and 4, which the child gets by dup2.
    high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
    high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(to_browser_r)
    os.close(from_browser_w)

    args = [executable, '--headless=new', '--no-sandbox', '--disable-gpu',
            '--remote-debugging-pipe', f'--user-data-dir={self.user_dir}', '--no-first-run',
            '--no-default-browser-check', '--disable-extensions', '--disable-sync',
            '--disable-background-networking', '--disable-component-update',
            '--host-resolver-rules=MAP * ~NOTFOUND', '--proxy-server=127.0.0.1:9',
            '--window-size=1280,900', 'about:blank']
    # A small exec wrapper puts the pipe ends on descriptors 3 and 4 (a preexec_fn would fork a
    # multithreaded process, which JAX warns about).
    try:
      self.proc = subprocess.Popen(
          [sys.executable, '-c', PIPE_WRAPPER, str(high_r), str(high_w), *args],
          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
          pass_fds=(high_r, high_w), start_new_session=True)
    finally:
      os.close(high_r)
      os.close(high_w)
    self._messages: queue.Queue = queue.Queue()
    self._next_id = 0
    self.events: list[dict] = []
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    buffer = b''
    while True:
      try:
        chunk = os.read(self._from_browser, 1 << 16)
      except OSError:
        chunk = b''
      if not chunk:
        self._messages.put(None)
        return
      buffer += chunk
      *messages, buffer = buffer.split(b'\0')
      for m in messages:
        self._messages.put(json.loads(m))

  def _next(self, deadline: float) -> dict:
    left = deadline - time.monotonic()
    if left <= 0:
      raise TimeoutError('Chromium did not answer in time')
    try:
      message = self._messages.get(timeout=left)
    except queue.Empty:
      raise TimeoutError('Chromium did not answer in time') from None
    if message is None:
      raise RuntimeError(f'Chromium closed its pipe (exit status {self.proc.poll()})')
    return message

  def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
    """Sends a command and returns its result (events meanwhile go to `self.events`)."""
    self._next_id += 1
    message = {'id': self._next_id, 'method': method, 'params': params or {}}
    if session:
      message['sessionId'] = session
    os.write(self._to_browser, json.dumps(message).encode() + b'\0')
    deadline = time.monotonic() + self.timeout
    while True:
      reply = self._next(deadline)
      if reply.get('id') == self._next_id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply.get('result', {})
      if 'method' in reply:
        self.events.append(reply)

  def wait_for(self, method: str, session: str | None = None) -> dict:
    """Waits for an event (one already received counts)."""
    def match(e):
      return e.get('method') == method and (session is None or e.get('sessionId') == session)
    for e in self.events:
      if match(e):
        return e
    deadline = time.monotonic() + self.timeout
    while True:
      message = self._next(deadline)
      if 'method' in message:
        self.events.append(message)
        if match(message):
          return message

  def drain(self, seconds: float) -> None:
    """Collects the events of the next `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
      try:
        message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        return
      if message is None:
        return
      if 'method' in message:
        self.events.append(message)

  def kill(self) -> None:
    """Kills the browser and its children (its process group)."""
    try:
      os.killpg(self.proc.pid, 9)
    except (ProcessLookupError, PermissionError):
      pass

  def close(self) -> None:
    """Kills the browser and its children, and removes its profile."""
    self.kill()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
    for fd in (self._to_browser, self._from_browser):
      try:
        os.close(fd)
      except OSError:
        pass
    shutil.rmtree(self.user_dir, ignore_errors=True)


def _errors(events: list[dict], session: str) -> list[str]:
  """The page's uncaught exceptions, console errors and error log entries."""
  found = []
  for e in events:
    if e.get('sessionId') != session:
      continue
    p = e.get('params', {})
    if e['method'] == 'Runtime.exceptionThrown':
      found.append(f'exception: {p.get("exceptionDetails", {}).get("text")}')
    elif e['method'] == 'Runtime.consoleAPICalled' and p.get('type') == 'error':
      found.append('console.error: ' + ' '.join(str(a.get('value', a.get('description')))
                                                for a in p.get('args', [])))
    elif e['method'] == 'Log.entryAdded' and p.get('entry', {}).get('level') == 'error':
      found.append(f'log: {p["entry"].get("text")} ({p["entry"].get("url", "")})')
  return found


def _load(browser: DevTools, url: str) -> dict:
  """One page in a fresh tab, offline: see `open_pages`."""
  target = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
  session = browser.send('Target.attachToTarget', {'targetId': target,
                                                   'flatten': True})['sessionId']
  for domain in ('Runtime', 'Log', 'Page', 'Network'):
    browser.send(f'{domain}.enable', session=session)
  browser.send('Network.emulateNetworkConditions', {
      'offline': True, 'latency': 0, 'downloadThroughput': -1, 'uploadThroughput': -1},
      session=session)
  browser.events.clear()
  browser.send('Page.navigate', {'url': url}, session=session)
  browser.wait_for('Page.loadEventFired', session)
  browser.drain(0.5)  # late console messages
  facts = json.loads(browser.send('Runtime.evaluate', {
      'expression': PAGE_FACTS, 'returnByValue': True}, session=session)['result']['value'])
  height = min(int(facts['height']), 16000)
  browser.send('Emulation.setDeviceMetricsOverride', {
      'width': 1280, 'height': max(height, 600), 'deviceScaleFactor': 1, 'mobile': False},
      session=session)
  shot = browser.send('Page.captureScreenshot', {'format': 'png'}, session=session)['data']
  browser.drain(0.2)
  requests = [e['params']['request']['url'] for e in browser.events
              if e.get('method') == 'Network.requestWillBeSent' and e.get('sessionId') == session]
  errors = _errors(browser.events, session)
  browser.send('Target.closeTarget', {'targetId': target})
  return {'errors': errors, 'requests': requests, 'facts': facts,
          'screenshot': base64.b64decode(shot)}


def open_pages(executable: str, urls: list[str], timeout: float = 60.0) -> list[dict]:
  """Loads each URL offline in one headless Chromium and returns, per page, {'errors' (uncaught
  exceptions, console errors, error log entries), 'requests' (every URL it asked for), 'facts'
  (PAGE_FACTS), 'screenshot' (PNG bytes)}. Each protocol call waits at most `timeout` seconds,
  and a watchdog kills the browser after `timeout` seconds per page in all."""
  browser = DevTools(executable, timeout)
  watchdog = threading.Timer(timeout * max(1, len(urls)), browser.kill)
  watchdog.start()
  try:
    return [_load(browser, url) for url in urls]
  finally:
    watchdog.cancel()
    browser.close()
