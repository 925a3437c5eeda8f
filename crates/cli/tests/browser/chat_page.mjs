#!/usr/bin/env node
// End-to-end test of the chat page that `qwenrt serve` serves at `/`, in headless Chromium:
//
//   npm ci
//   node chat_page.mjs --bin PATH/TO/qwenrt --model MODEL_DIR [--screenshots DIR]
//
// It starts the servers it needs itself (`--port 0`), drives the page as a person would, prints
// "ok - CASE" for each case and "N passed, N failed" at the end, and exits non-zero at the first
// failure. The model should be a small multimodal one (its answers may be gibberish). CHROMIUM
// names the browser binary (default /usr/bin/chromium). With --screenshots, chat.png and busy.png
// are saved there (and failure.png when a case fails).

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const USAGE = 'usage: node chat_page.mjs --bin PATH_TO_qwenrt --model MODEL_DIR [--screenshots DIR]';

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const name = { '--bin': 'bin', '--model': 'model', '--screenshots': 'screenshots' }[argv[i]];
    if (!name || i + 1 >= argv.length) fail(argv[i] === '--help' ? USAGE : `unexpected argument ${argv[i]}\n${USAGE}`);
    opts[name] = argv[++i];
  }
  if (!opts.bin || !opts.model) fail(USAGE);
  return opts;
}

function fail(message) {
  console.error(message);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
/** How long an answer may take: the model is tiny, but the build may be a debug one on slow cores. */
const ANSWER = 180_000;
/** How long the page may take to react to a click or a key. */
const UI = 30_000;
const VIEWPORT = { width: 1200, height: 800 };
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// ---------- Servers ----------

const servers = new Set();
/** Every server started, for their logs when a case fails. */
const started = [];

/** Starts `qwenrt serve` on a free port; resolves once it prints where it listens. */
async function startServer(extra = []) {
  const proc = spawn(opts.bin, ['serve', '--model', opts.model, '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  servers.add(proc);
  let log = '';
  proc.stderr.setEncoding('utf8').on('data', d => { log = (log + d).slice(-6000); });
  const lines = createInterface({ input: proc.stdout });
  const first = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server printed no address within 120 s:\n${log}`)), 120_000);
    lines.once('line', line => { clearTimeout(timer); resolve(line); });
    proc.once('error', e => { clearTimeout(timer); reject(new Error(`cannot run ${opts.bin}: ${e.message}`)); });
    proc.once('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`the server exited (${code ?? signal}) before listening:\n${log}`)); });
  });
  const m = first.match(/^listening on (http:\/\/\S+)$/);
  if (!m) throw new Error(`unexpected first line from the server: ${JSON.stringify(first)}`);
  const srv = { url: m[1], log: () => log, flags: extra.join(' '), stop: () => stopServer(proc) };
  started.push(srv);
  return srv;
}

async function stopServer(proc) {
  if (proc.exitCode === null && proc.signalCode === null) {
    const exited = once(proc, 'exit');
    proc.kill('SIGTERM');
    if (await Promise.race([exited.then(() => true), sleep(10_000)]) !== true) proc.kill('SIGKILL');
  }
  servers.delete(proc);
}

process.on('exit', () => { for (const proc of servers) proc.kill('SIGKILL'); });
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

const json = res => res.ok ? res.json() : res.text().then(t => { throw new Error(`HTTP ${res.status}: ${t}`); });
const health = srv => fetch(srv.url + '/health').then(json);

/** Polls `check` until it returns something truthy. */
async function waitFor(what, check, timeout = UI) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(200);
  }
}

/**
 * Fills every slot and queue place of a server with long streamed answers made from here, so
 * that the next request gets a 503; returns a function that ends them.
 */
async function occupy(srv) {
  const ctrl = new AbortController();
  const body = JSON.stringify({
    messages: [{ role: 'user', content: 'Tell me a very long story.' }],
    stream: true, max_tokens: 20000, chat_template_kwargs: { enable_thinking: false },
  });
  for (let sent = 0; ; sent++) {
    const h = await health(srv);
    if (h.slots_idle === 0 && h.requests_waiting >= h.queue_capacity) break;
    if (sent === 4) throw new Error(`4 requests did not fill the server: ${JSON.stringify(h)}`);
    const res = await fetch(srv.url + '/v1/chat/completions', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body, signal: ctrl.signal,
    });
    if (!res.ok) throw new Error(`the server refused a request meant to keep it busy: HTTP ${res.status} ${await res.text()}`);
    // Read it in the background; the server generates until it ends or the request is aborted.
    res.body.pipeTo(new WritableStream()).catch(() => {});
    const before = h.slots_processing + h.requests_waiting;
    await waitFor('/health to count the request', async () => {
      const now = await health(srv);
      return now.slots_processing + now.requests_waiting > before;
    });
  }
  return () => ctrl.abort();
}

// ---------- A small PNG, made here ----------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc32 = buf => (buf.reduce((c, b) => CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8), 0xffffffff) ^ 0xffffffff) >>> 0;

/** An RGB PNG of a colour gradient. */
function makePng(width, height) {
  const chunk = (type, data) => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([head, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8 bits, RGB, deflate, no filter, no interlace
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      raw.set([(x * 255) / (width - 1), (y * 255) / (height - 1), 160], y * (width * 3 + 1) + 1 + x * 3);
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---------- The page ----------

const pages = [];

/** Opens the chat page of a server in a fresh browser profile, watching for what must not happen. */
async function openPage(browser, srv) {
  const context = await browser.newContext({ viewport: VIEWPORT });
  const page = await context.newPage();
  page.setDefaultTimeout(UI);
  const problems = [];
  const origin = new URL(srv.url).origin;
  page.on('pageerror', e => problems.push(`uncaught error in the page: ${e.message}`));
  page.on('console', m => { if (/Content.Security.Policy/i.test(m.text())) problems.push(`CSP violation: ${m.text()}`); });
  page.on('request', r => {
    const url = new URL(r.url());
    if (!['data:', 'blob:'].includes(url.protocol) && url.origin !== origin) problems.push(`request to another origin: ${r.url()}`);
  });
  pages.push({ page, problems });
  await page.goto(srv.url + '/');
  return page;
}

const byId = (scope, id) => scope.getByTestId(id);

/** Waits until the header shows the served model's name. */
async function ready(page, model) {
  await byId(page, 'model-name').filter({ hasText: model }).waitFor();
}

async function configure(page, fields) {
  await byId(page, 'settings-button').click();
  const dialog = byId(page, 'settings-dialog');
  await dialog.waitFor();
  if ('thinking' in fields) await byId(page, 'thinking-toggle').setChecked(fields.thinking);
  for (const name of ['temperature', 'top_p', 'top_k', 'min_p', 'max_tokens']) {
    if (name in fields) await byId(page, 'setting-' + name).fill(String(fields[name]));
  }
  await byId(page, 'settings-close').click();
  await dialog.waitFor({ state: 'hidden' });
}

/** Types a message and sends it with Enter; resolves to the locator of its answer. */
async function send(page, text) {
  const answers = byId(page, 'message-assistant');
  const before = await answers.count();
  await byId(page, 'composer-input').fill(text);
  await byId(page, 'composer-input').press('Enter');
  await waitFor('the answer to start', async () => await answers.count() === before + 1);
  return answers.nth(before);
}

/** Waits for an answer to end, and fails if it ended in an error. */
async function finished(answer) {
  await answer.locator('[data-testid=stats], [data-testid=error-message]').first().waitFor({ timeout: ANSWER });
  const error = byId(answer, 'error-message');
  if (await error.count()) throw new Error(`the answer ended in an error: ${await error.innerText()}`);
  return answer;
}

const text = async locator => (await locator.innerText()).trim();

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** What a conversation shows, to compare before and after a reload. */
async function transcript(page) {
  return page.evaluate(() => ({
    users: [...document.querySelectorAll('[data-testid=message-user]')].map(m => m.innerText.trim()),
    answers: [...document.querySelectorAll('[data-testid=message-content]')].map(m => m.innerText.trim()),
    stats: [...document.querySelectorAll('[data-testid=stats]')].map(m => m.innerText.trim()),
    images: [...document.querySelectorAll('[data-testid=message-image]')].map(i => i.src),
    thinking: document.querySelectorAll('[data-testid=thinking-block]').length,
  }));
}

// ---------- The cases ----------

let passed = 0;
let current = null;

async function step(name, body) {
  const start = Date.now();
  current = name;
  await body();
  for (const { problems } of pages) {
    if (problems.length) throw new Error(problems.join('\n'));
  }
  passed++;
  console.log(`ok - ${name} (${((Date.now() - start) / 1000).toFixed(1)} s)`);
}

async function shot(page, name) {
  if (!opts.screenshots) return;
  fs.mkdirSync(opts.screenshots, { recursive: true });
  await page.screenshot({ path: path.join(opts.screenshots, name) });
}

async function main(browser, tmp) {
  const srv = await startServer();
  const props = await fetch(srv.url + '/props').then(json);
  check(props.modalities?.vision, `the test needs a model with vision: /props says ${JSON.stringify(props)}`);
  const page = await openPage(browser, srv);
  await ready(page, props.model);

  await step('a streamed answer, with its thinking folded, and the speed', async () => {
    // Record the answer's length at every change, to see it arrive in pieces.
    await page.evaluate(() => {
      window.lengths = [];
      new MutationObserver(() => {
        const answer = [...document.querySelectorAll('[data-testid=message-assistant]')].at(-1);
        if (answer) window.lengths.push(answer.innerText.length);
      }).observe(document.querySelector('[data-testid=messages]'), { subtree: true, childList: true, characterData: true });
    });
    await configure(page, { thinking: true, max_tokens: 24 });
    const first = await finished(await send(page, 'Write a Rust function that adds two numbers, in a code block.'));
    const thinking = byId(first, 'thinking-block');
    check(await thinking.count() === 1, 'a thinking answer shows no Thinking block');
    check(!await thinking.evaluate(d => d.open), 'the Thinking block is still open after the answer');
    check((await text(thinking)).length > 0, 'the Thinking block is empty');
    const lengths = await page.evaluate(() => new Set(window.lengths.filter(n => n > 0)).size);
    check(lengths >= 3, `the answer did not arrive in pieces (${lengths} distinct lengths)`);

    await configure(page, { thinking: false, max_tokens: 48 });
    const second = await finished(await send(page, 'And now without thinking, please.'));
    check((await text(byId(second, 'message-content'))).length > 0, 'the answer is empty');
    check(await byId(second, 'thinking-block').count() === 0, 'an answer without thinking shows a Thinking block');
    const stats = await text(byId(second, 'stats'));
    check(/^\d+ tokens? · [\d.]+ tok\/s · prompt \d+ \(\d+ cached\)$/.test(stats), `unexpected stats line: ${stats}`);
    check(await byId(page, 'stop-button').isHidden(), 'the stop button is still shown');
    await shot(page, 'chat.png');
  });

  await step('stop a generation', async () => {
    await byId(page, 'new-conversation').click();
    await configure(page, { max_tokens: 20000 });
    const answer = await send(page, 'Count from one to ten thousand, one number per line.');
    await byId(page, 'stop-button').waitFor();
    const content = byId(answer, 'message-content');
    await waitFor('some of the answer', async () => (await text(content)).length > 10, ANSWER);
    check((await health(srv)).slots_processing === 1, 'the server is not generating');
    await byId(page, 'stop-button').click();
    await byId(page, 'stop-button').waitFor({ state: 'hidden' });
    await byId(page, 'send-button').waitFor();
    await byId(answer, 'stopped-tag').waitFor();
    check((await text(content)).length > 10, 'the partial answer is gone');
    check(/tok\/s/.test(await text(byId(answer, 'stats'))), 'a stopped answer shows no speed');
    await waitFor('the server to free its slot', async () => (await health(srv)).slots_processing === 0, 15_000);
  });

  await step('an image attached and answered', async () => {
    await byId(page, 'new-conversation').click();
    await configure(page, { max_tokens: 32 });
    const file = path.join(tmp, 'gradient.png');
    fs.writeFileSync(file, makePng(32, 32));
    await byId(page, 'file-input').setInputFiles(file);
    await byId(page, 'attachment').waitFor();
    const answer = await finished(await send(page, 'What is in this picture?'));
    check(await byId(page, 'attachment').count() === 0, 'the composer still holds the image');
    const image = byId(byId(page, 'message-user').last(), 'message-image');
    check((await image.getAttribute('src')).startsWith('data:image/png;base64,'), 'the sent message shows no image');
    check((await image.evaluate(i => i.naturalWidth)) === 32, 'the thumbnail is not the picture');
    check((await text(byId(answer, 'message-content'))).length > 0, 'the answer is empty');
  });

  await step('conversations kept across a reload', async () => {
    const before = await transcript(page);
    await page.reload();
    await ready(page, props.model);
    const after = await transcript(page);
    check(JSON.stringify(after) === JSON.stringify(before),
      `the conversation changed with the reload:\n${JSON.stringify(before)}\n${JSON.stringify(after)}`);
    const items = byId(page, 'conversation-item');
    check(await items.count() === 3, `the sidebar lists ${await items.count()} conversations, not 3`);
    const newest = await text(byId(items.first(), 'conversation-title'));
    check(newest === 'What is in this picture?', `the newest conversation is ${newest}`);
    await byId(items.filter({ hasText: 'Write a Rust function' }), 'conversation-title').click();
    await byId(page, 'message-user').first().filter({ hasText: 'Write a Rust function' }).waitFor();
    const first = await transcript(page);
    check(first.users.length === 2 && first.answers.length === 2 && first.thinking === 1,
      `the first conversation came back as ${JSON.stringify(first)}`);
  });

  await step('markdown rendered, and HTML in answers shown as text', async () => {
    // The model's answers are random, so the page's own renderer is given a fixed text.
    const html = await page.evaluate(() => markdown([
      '# Title', '', 'Some **bold**, *italic* and `<b>code</b>`, a [link](https://example.com/?a=1&b=2) and a',
      '[bad link](javascript:alert(1)) <img src=x onerror="window.pwned=1"> <script>window.pwned=1</script>', '',
      '- one', '- two', '  1. nested', '', '```rust', 'fn main() { println!("<hi>"); }', '```', '',
      '| a | b |', '|---|--:|', '| 1 | 2 |', '', '> quoted',
    ].join('\n')));
    const found = await page.evaluate(html => {
      const box = document.createElement('div');
      box.innerHTML = html;
      const count = selector => box.querySelectorAll(selector).length;
      return {
        h1: count('h1'), strong: count('strong'), em: count('em'), code: count('p code'), nested: count('ul > li > ol > li'),
        block: box.querySelector('pre code')?.textContent, table: count('td'), quote: count('blockquote'),
        links: [...box.querySelectorAll('a')].map(a => `${a.getAttribute('href')} ${a.rel}`),
        unsafe: count('img, script, [onerror]'), text: box.textContent,
      };
    }, html);
    const expected = {
      h1: 1, strong: 1, em: 1, code: 1, nested: 1, block: 'fn main() { println!("<hi>"); }', table: 2, quote: 1,
      links: ['https://example.com/?a=1&b=2 noopener noreferrer'], unsafe: 0,
    };
    for (const [key, value] of Object.entries(expected)) {
      check(JSON.stringify(found[key]) === JSON.stringify(value), `markdown: ${key} is ${JSON.stringify(found[key])}, not ${JSON.stringify(value)}\n${html}`);
    }
    check(found.text.includes('<img src=x onerror="window.pwned=1">') && found.text.includes('<b>code</b>'), `HTML was not kept as text:\n${html}`);
    check(!await page.evaluate(() => window.pwned), 'markup in the text ran');
  });

  await step('a full browser storage warned about, and the chat going on', async () => {
    await byId(page, 'new-conversation').click();
    const filled = await page.evaluate(() => {
      let n = 0;
      for (let size = 1 << 20; size >= 16; size >>= 2) {
        try {
          for (;;) localStorage.setItem(`filler${n++}`, 'x'.repeat(size));
        } catch {
          // Full at this size: go on with smaller pieces.
        }
      }
      return n;
    });
    check(filled > 4, 'the storage did not fill up');
    try {
      await byId(page, 'file-input').setInputFiles(path.join(tmp, 'gradient.png'));
      await finished(await send(page, 'Is this kept?'));
      await byId(page, 'storage-warning').waitFor();
      const warning = await text(byId(page, 'storage-warning'));
      check(/storage is full/.test(warning), `unexpected warning: ${warning}`);
    } finally {
      await page.evaluate(() => Object.keys(localStorage).filter(k => k.startsWith('filler')).forEach(k => localStorage.removeItem(k)));
    }
  });

  await step('the server busy (503) shown, then a retry answered', async () => {
    const busy = await startServer(['--parallel', '1', '--queue', '0']);
    const release = await occupy(busy);
    try {
      const page = await openPage(browser, busy);
      await ready(page, props.model);
      await configure(page, { thinking: false, max_tokens: 16 });
      const answer = await send(page, 'Are you there?');
      const error = byId(answer, 'error-message');
      await error.waitFor({ timeout: ANSWER });
      const message = await text(error);
      check(/The server is busy/.test(message) && /retry later/.test(message), `unexpected error message: ${message}`);
      check(await text(byId(page, 'message-user')) === 'Are you there?', 'the message is gone');
      await shot(page, 'busy.png');
      release();
      await waitFor('the server to be idle', async () => {
        const h = await health(busy);
        return h.slots_processing === 0 && h.requests_waiting === 0;
      });
      await byId(page, 'retry-button').click();
      await finished(byId(page, 'message-assistant').last());
      check(await byId(page, 'message-assistant').count() === 1, 'the retry left the failed answer');
      await page.context().close();
    } finally {
      release();
      await busy.stop();
    }
  });

  await step('an API key asked for, kept, and used', async () => {
    const locked = await startServer(['--api-key', 'secret']);
    try {
      const res = await fetch(locked.url + '/props');
      check(res.status === 401, `/props without the key answered ${res.status}`);
      const page = await openPage(browser, locked);
      const dialog = byId(page, 'api-key-dialog');
      await dialog.waitFor();
      await byId(page, 'api-key-input').fill('not the key');
      await byId(page, 'api-key-submit').click();
      await dialog.getByText('refused').waitFor();
      await byId(page, 'api-key-input').fill('secret');
      await byId(page, 'api-key-submit').click();
      await dialog.waitFor({ state: 'hidden' });
      await ready(page, props.model);
      await configure(page, { thinking: false, max_tokens: 16 });
      await finished(await send(page, 'Hello with a key'));
      await page.reload();
      await ready(page, props.model);
      check(await dialog.isHidden(), 'the key was asked for again after a reload');
      await page.context().close();
    } finally {
      await locked.stop();
    }
  });
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qwenrt-chat-page-'));
let browser;
let code = 0;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  await main(browser, tmp);
  console.log(`${passed} passed, 0 failed`);
} catch (e) {
  code = 1;
  console.log(`not ok - ${current ?? 'setup'}`);
  console.error(e.stack || String(e));
  for (const srv of started) console.error(`--- log of qwenrt serve ${srv.flags} (end) ---\n${srv.log()}`);
  const last = pages.at(-1)?.page;
  if (last && !last.isClosed()) await shot(last, 'failure.png').catch(() => {});
  console.log(`${passed} passed, 1 failed`);
} finally {
  await browser?.close().catch(() => {});
  await Promise.all([...servers].map(stopServer));
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(code);
