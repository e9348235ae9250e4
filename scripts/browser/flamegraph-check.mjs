// Opens a flamegraph SVG in headless Chromium and uses it as a person would: Ctrl-F to
// search for a function, then a click on one of its frames to zoom. Prints what the page
// showed as JSON; exits non-zero when search or zoom did not work.
//
//   node scripts/browser/flamegraph-check.mjs FILE.svg FUNCTION [SCREENSHOT.png]
//
// Needs Debian's chromium and the npm package playwright-core (scripts/test.sh installs
// both; set DIAG_BROWSER_TOOLS to the folder holding node_modules when elsewhere).
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [file, term, shot] = process.argv.slice(2);
if (!file || !term) {
  console.error("usage: flamegraph-check.mjs FILE.svg FUNCTION [SCREENSHOT.png]");
  process.exit(2);
}
const tools = process.env.DIAG_BROWSER_TOOLS ?? resolve("target/browser");
const require = createRequire(join(tools, "package.json"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  // playwright gives the browser a fresh, empty profile directory of its own.
});
const result = { file, term };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // inferno's search asks for the term with prompt().
  page.on("dialog", (d) => d.accept(term));
  await page.goto(pathToFileURL(resolve(file)).href);
  result.title = await page.locator("#title").textContent();
  result.frames = await page.locator("#frames > g").count();

  await page.keyboard.press("Control+F");
  await page.waitForFunction(() => document.getElementById("matched").textContent.startsWith("Matched"));
  result.matched = await page.locator("#matched").textContent();
  // Search paints matching frames in the page's own search colour.
  result.highlighted = await page.evaluate(() =>
    [...document.querySelectorAll("#frames rect")].filter((r) => r.getAttribute("fill") === searchcolor).length);

  const frame = page.locator("#frames > g", { has: page.locator("title", { hasText: term }) }).first();
  const width = () => frame.locator("rect").first().evaluate((r) => parseFloat(r.getAttribute("width")));
  result.widthBeforeZoom = await width();
  await frame.click();
  result.widthAfterZoom = await width();
  result.unzoomVisible = !(await page.locator("#unzoom").getAttribute("class")).includes("hide");
  result.hiddenAfterZoom = await page.locator("#frames > g.hide").count();
  if (shot) await page.screenshot({ path: shot });
  result.errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
const pct = parseFloat((result.matched ?? "").replace(/[^0-9.]/g, ""));
const zoomed = result.unzoomVisible && result.widthAfterZoom >= result.widthBeforeZoom;
const ok = result.frames > 0 && pct > 0 && result.highlighted > 0 && zoomed && result.errors.length === 0;
process.exit(ok ? 0 : 1);
