// The operator's path in a real browser: an event the runner refuses ends
// dead; the operator logs in to the Django admin, filters dead events,
// selects it, runs "Send again", and the runner receives it. Headless
// Chromium (Debian's) drives the Django dev server, which runs the test
// project of ../tests; the real relay binary delivers; the runner is an
// HTTP server in this test. Screenshots go to artifacts/.
//
// Needs OUTBOX_TEST_DATABASE_URL (a throwaway database: make test-django
// runs this under withpg), OUTBOX_RELAY_BIN and OUTBOX_PYTHON (the Python
// the app is installed in).

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const project = join(here, '..', 'tests');
const artifacts = join(here, 'artifacts');

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (make test-django sets it)`);
  return value;
}

const env = {
  databaseURL: required('OUTBOX_TEST_DATABASE_URL'),
  relayBin: required('OUTBOX_RELAY_BIN'),
  python: required('OUTBOX_PYTHON'),
};

// manage.py runs a command of the test project to its end; its stdout.
async function manage(...args) {
  const { stdout } = await promisify(execFile)(env.python, ['manage.py', ...args], {
    cwd: project,
    env: { ...process.env, DJANGO_SUPERUSER_PASSWORD: 'operator-password' },
  });
  return stdout;
}

// waitFor polls condition until it returns something truthy, and returns
// that; past the deadline it fails naming what it waited for.
async function waitFor(what, condition, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await condition();
    if (result) return result;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

// startRunner serves the relay's POSTs: it records each event and refuses
// it with 422 until accept() is called, then answers 204.
async function startRunner() {
  const received = [];
  let accepting = false;
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      if (req.method !== 'POST') return res.writeHead(204).end();
      received.push({ event: JSON.parse(body), accepted: accepting });
      if (accepting) return res.writeHead(204).end();
      res.writeHead(422, { 'Content-Type': 'text/plain' }).end('no such file: 42');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/events`,
    received,
    accept: () => { accepting = true; },
    stop: () => new Promise((resolve) => server.close(resolve)),
  };
}

// start runs a long-lived child whose output is kept for a failure report.
function start(name, command, args, options) {
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  return {
    name,
    output: () => output,
    running: () => child.exitCode === null && child.signalCode === null,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

test('an operator sends a dead event again from the admin', { timeout: 240_000 }, async (t) => {
  mkdirSync(artifacts, { recursive: true });
  const cleanups = [];
  t.after(async () => { for (const f of cleanups.reverse()) await f(); });
  const children = [];
  const report = (err) => {
    const logs = children.map((c) => `--- ${c.name}:\n${c.output().slice(-4000)}`).join('\n');
    err.message += `\n${logs}`;
    throw err;
  };

  try {
    await manage('migrate', '--noinput', '-v', '0');
    await manage('createsuperuser', '--noinput', '--username', 'operator', '--email', 'operator@example.com');

    const runner = await startRunner();
    cleanups.push(runner.stop);

    // The relay, configured as the README says: the two settings, plus
    // what outbox_relay_env prints for the app's table.
    const relayEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('RELAY_')));
    for (const line of (await manage('outbox_relay_env')).trim().split('\n')) {
      const i = line.indexOf('=');
      relayEnv[line.slice(0, i)] = line.slice(i + 1);
    }
    Object.assign(relayEnv, {
      RELAY_DATABASE_URL: env.databaseURL,
      RELAY_RUNNER_URL: runner.url,
      RELAY_SWEEP_INTERVAL: '200ms',
      RELAY_LISTEN_ADDR: 'off',
      RELAY_LOG_FORMAT: 'text',
    });
    const relay = start('relay', env.relayBin, ['run'], { env: relayEnv });
    children.push(relay);
    cleanups.push(relay.stop);

    const port = await freePort();
    const server = start('runserver', env.python, ['manage.py', 'runserver', `127.0.0.1:${port}`, '--noreload', '--insecure'], {
      cwd: project, env: process.env,
    });
    children.push(server);
    cleanups.push(server.stop);
    const base = `http://127.0.0.1:${port}`;
    await waitFor('the dev server', async () => {
      assert.ok(server.running(), 'the dev server exited');
      try { return (await fetch(`${base}/admin/login/`)).ok; } catch { return false; }
    });

    // The application publishes an event in its transaction; the runner
    // refuses it, and with a 422 the relay makes it dead at once.
    const eventId = (await manage('shell', '-c', [
      'from django.db import transaction',
      'from outbox_relay import publish',
      'with transaction.atomic():',
      '    print(publish("file.finalized", {"file_id": 42, "name": "Q3 report.pdf"}))',
    ].join('\n'))).trim();
    assert.match(eventId, /^[0-9a-f-]{36}$/);
    await waitFor('the runner to refuse the event', () => runner.received.length === 1);
    assert.equal(runner.received[0].event.id, eventId);

    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    cleanups.push(() => browser.close());
    // A fresh profile: launch() gives every run a new --user-data-dir.
    const page = await browser.newPage({ viewport: { width: 1600, height: 560 } });

    // The operator logs in and filters dead events.
    await page.goto(`${base}/admin/`);
    await page.fill('#id_username', 'operator');
    await page.fill('#id_password', 'operator-password');
    await page.click('input[type=submit]');
    await page.click('a:has-text("Outbox events")');
    const row = page.locator('#result_list tbody tr', { hasText: eventId });
    await waitFor('the event to show as dead', async () => {
      await page.click('#changelist-filter a:text-is("dead")');
      return (await row.count()) === 1;
    });
    assert.match(await page.locator('.outbox-dead').innerText(), /^1 dead$/);
    assert.match(await row.innerText(), /runner answered 422/);

    // Selects it and chooses "Send again"; the runner now takes it.
    await row.locator('input.action-select').check();
    await page.selectOption('select[name=action]', { label: 'Send again (dead events)' });
    await page.screenshot({ path: join(artifacts, 'admin-send-again.png') });
    runner.accept();
    await page.click('button[name=index]');
    await page.locator('.messagelist').waitFor();
    assert.match(await page.locator('.messagelist').innerText(), /1 dead event moved back to pending: the relay sends it again\./);

    await waitFor('the runner to receive the event again', () => runner.received.some((r) => r.accepted));
    const again = runner.received.filter((r) => r.accepted);
    assert.equal(again.length, 1);
    assert.equal(again[0].event.id, eventId, 'sent again with its own event id');
    assert.equal(again[0].event.attempt, 1);
    assert.deepEqual(again[0].event.data, { file_id: 42, name: 'Q3 report.pdf' });

    // And the admin shows it delivered.
    await waitFor('the event to show as delivered', async () => {
      await page.goto(`${base}/admin/outbox_relay/outboxevent/?status__exact=delivered`);
      return (await row.count()) === 1;
    });
    assert.match(await page.locator('.outbox-dead').innerText(), /^0 dead$/);
    await page.screenshot({ path: join(artifacts, 'admin-delivered.png') });
  } catch (err) {
    report(err);
  }
});
