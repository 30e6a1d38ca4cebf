// The browser test of `cargo xtask ci --only browser` (xtask/src/ci/browser.rs starts the
// backend, the frontend server and PostgreSQL, and makes the first admin).
//
// Debian's Chromium, driven by playwright-core, uses the app the way people do, on one
// origin as in production: a small proxy here sends `/api/*` to the backend without the
// prefix (Traefik's strip-api-prefix) and everything else to the frontend server. The admin
// makes a team, an employee and a manager; the employee replaces the one-time password,
// clocks in and out and sees today's total and the history; the manager sees the team's
// totals; after each sign-out the pages are closed. Screenshots go to $SCREENSHOTS.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const backend = new URL(env('BACKEND_URL'));
const frontend = new URL(env('FRONTEND_URL'));
const adminEmail = env('ADMIN_EMAIL');
const adminPassword = env('ADMIN_PASSWORD');
const screenshots = env('SCREENSHOTS');
mkdirSync(screenshots, { recursive: true });

/** The local stand-in for Traefik's routers. */
function startProxy() {
  const server = http.createServer((req, res) => {
    const api = req.url === '/api' || req.url.startsWith('/api/');
    const upstream = api ? backend : frontend;
    const path = api ? req.url.slice('/api'.length) || '/' : req.url;
    const forward = http.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path,
        headers: { ...req.headers, 'x-forwarded-for': req.socket.remoteAddress },
      },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', (err) => {
      res.writeHead(502);
      res.end(String(err));
    });
    req.pipe(forward);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const proxy = await startProxy();
const origin = `http://127.0.0.1:${proxy.address().port}`;
const profile = mkdtempSync(join(tmpdir(), 'tm-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const timeout = 15_000;
context.setDefaultTimeout(timeout);
const page = context.pages()[0] ?? (await context.newPage());
let shots = 0;

async function shot(name) {
  shots += 1;
  await page.screenshot({ path: join(screenshots, `${String(shots).padStart(2, '0')}-${name}.png`), fullPage: true });
}

async function expectVisible(locator, what) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch (err) {
    await shot(`failed-${what.replace(/\W+/g, '-')}`);
    throw new Error(`${what}: not shown (${err.message.split('\n')[0]})`);
  }
}

async function signIn(email, password) {
  await page.goto(origin);
  await expectVisible(page.getByRole('heading', { name: 'Sign in' }), 'the sign-in page');
  if (shots === 0) await shot('sign-in');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** Signs out, then finds the pages and the API closed. */
async function signOutAndCheckClosed(who) {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expectVisible(page.getByRole('heading', { name: 'Sign in' }), `the sign-in page after ${who} signed out`);
  await page.reload();
  await expectVisible(page.getByRole('heading', { name: 'Sign in' }), `the sign-in page on reload after ${who} signed out`);
  const statuses = await page.evaluate(async () =>
    Promise.all(['/api/auth/me', '/api/users', '/api/teams'].map(async (path) => (await fetch(path)).status)),
  );
  if (statuses.some((status) => status !== 401)) {
    throw new Error(`after ${who} signed out the API answered ${statuses.join(', ')}, expected 401`);
  }
  await shot(`signed-out-${who}`);
}

/** First sign-in with a one-time password: the app asks for a new one first. */
async function firstSignIn(email, oneTime, chosen) {
  await signIn(email, oneTime);
  await expectVisible(page.getByRole('heading', { name: 'Change password' }), 'the forced password change');
  await shot(`change-password-${email.split('@')[0]}`);
  await page.getByLabel('Current password').fill(oneTime);
  await page.getByLabel('New password', { exact: true }).fill(chosen);
  await page.getByLabel('New password again').fill(chosen);
  await page.getByRole('button', { name: 'Change password' }).click();
}

async function createUser(username, role) {
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Email', { exact: true }).fill(`${username}@example.com`);
  await page.getByLabel('Role').selectOption(role);
  await page.getByLabel('Team', { exact: true }).selectOption({ label: 'Day shift' });
  await page.getByRole('button', { name: 'Create user' }).click();
  const password = page.getByTestId('one-time-password');
  await expectVisible(password, `the one-time password of ${username}`);
  const text = (await password.textContent()).trim();
  await page.getByRole('button', { name: 'Done' }).click();
  return text;
}

try {
  // The admin: a team, an employee and a manager.
  await signIn(adminEmail, adminPassword);
  await expectVisible(page.getByText('Signed in as'), 'the admin signed in');
  await page.getByRole('button', { name: 'Admin' }).click();
  await page.getByLabel('Team name').fill('Day shift');
  await page.getByRole('button', { name: 'Create team' }).click();
  await expectVisible(page.getByRole('listitem').filter({ hasText: 'Day shift' }), 'the new team');
  const erinOneTime = await createUser('erin', 'employee');
  const monaOneTime = await createUser('mona', 'manager');
  await expectVisible(page.getByRole('cell', { name: /mona/ }), 'the users table');
  await shot('admin');
  await signOutAndCheckClosed('admin');

  // The employee: clock in, clock out, today's total and the history.
  await firstSignIn('erin@example.com', erinOneTime, 'erin chose this passphrase');
  await expectVisible(page.getByRole('button', { name: 'Clock in' }), "the employee's clock");
  await page.getByRole('button', { name: 'Clock in' }).click();
  await expectVisible(page.getByRole('button', { name: 'Clock out' }), 'the clock after clocking in');
  await shot('employee-clocked-in');
  await page.getByRole('button', { name: 'Clock out' }).click();
  await expectVisible(page.getByRole('button', { name: 'Clock in' }), 'the clock after clocking out');
  await expectVisible(page.getByText('Worked today:'), "today's total");
  await expectVisible(page.getByRole('heading', { name: 'History' }), 'the history');
  if (await page.getByRole('button', { name: 'My team' }).count()) throw new Error('an employee sees "My team"');
  if (await page.getByRole('button', { name: 'Admin' }).count()) throw new Error('an employee sees "Admin"');
  await shot('employee-history');
  await signOutAndCheckClosed('employee');

  // The manager: the team's totals, the employee's shift among them.
  await firstSignIn('mona@example.com', monaOneTime, 'mona chose this passphrase');
  await page.getByRole('button', { name: 'My team' }).click();
  await expectVisible(page.getByRole('heading', { name: 'Team Day shift' }), "the team's totals");
  await expectVisible(page.getByRole('cell', { name: 'erin' }), 'the employee in the team view');
  await shot('manager-team');
  await signOutAndCheckClosed('manager');
  console.log(`browser test passed: ${shots} screenshots in ${screenshots}`);
} finally {
  await context.close();
  proxy.close();
  rmSync(profile, { recursive: true, force: true });
}
