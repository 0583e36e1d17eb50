// Orders pizzas on the web page by clicking, as a person would, in headless Chromium, and
// prints what the page then shows as JSON: the pizza cards and the cheese chart.
//
//   node order-pizzas.mjs <page url> <screenshot.png> [count]
//
// CHROMIUM names the browser executable (Debian's chromium; see dev/browser.sh).
import { chromium } from "playwright-core";

const [url, screenshot, count = "3"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const page = await browser.newPage({ viewport: { width: 1100, height: 1000 } });
const logs = [];
page.on("console", (message) => logs.push(`console: ${message.text()}`));
page.on("pageerror", (error) => logs.push(`page error: ${error.message}`));
try {
  await page.goto(url);
  await page.getByLabel("How many pizzas").fill(count);
  await page.getByRole("button", { name: "Order pizzas" }).click();
  const wanted = Number(count);
  await page.waitForFunction(
    (n) => document.querySelectorAll('.card[data-status="complete"]').length === n,
    wanted,
    { timeout: 60_000 },
  );
  await page.waitForFunction(
    (n) =>
      [...document.querySelectorAll('[data-report="cheese"] [data-count]')]
        .reduce((sum, row) => sum + Number(row.dataset.count), 0) === n,
    wanted,
    { timeout: 60_000 },
  );
  const cards = await page.$$eval(".card", (all) =>
    all.map((card) =>
      Object.fromEntries([...card.querySelectorAll("[data-field]")].map((f) => [f.dataset.field, f.textContent])),
    ),
  );
  const chart = await page.$$eval('[data-report="cheese"] [data-count]', (rows) =>
    Object.fromEntries(rows.map((row) => [row.dataset.key, Number(row.dataset.count)])),
  );
  const stages = await page.$$eval("#stages th[scope=row]", (rows) => rows.map((r) => r.textContent));
  await page.screenshot({ path: screenshot, fullPage: true });
  // The same page as a phone shows it: nothing may stick out sideways but the table, which
  // scrolls in its own box.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-phone.png"), fullPage: true });
  console.log(JSON.stringify({ cards, chart, stages, phone_overflow: overflow }));
} catch (error) {
  // What the page showed when it went wrong, for the test's failure message.
  await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  const cards = await page.$eval("#cards", (c) => c.innerText).catch(() => "?");
  console.error(`${error.message}\ncards: ${cards}\n${logs.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
