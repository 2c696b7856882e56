// Copies the map library from node_modules into the console's static folder (run by `npm run build`,
// which scripts/setup.sh calls after `npm ci`): the console serves it itself, no CDN at run time.
import { cpSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const src = join(root, "node_modules", "leaflet", "dist");
const dest = join(here, "static", "vendor", "leaflet");

if (!existsSync(join(src, "leaflet.js"))) {
  console.error(`leaflet is not installed in ${join(root, "node_modules")}: run \`npm ci\` first`);
  process.exit(1);
}
rmSync(dest, { recursive: true, force: true });
mkdirSync(join(dest, "images"), { recursive: true });
for (const f of ["leaflet.js", "leaflet.css", "leaflet.js.map"]) {
  if (existsSync(join(src, f))) cpSync(join(src, f), join(dest, f));
}
cpSync(join(src, "images"), join(dest, "images"), { recursive: true });
cpSync(join(root, "node_modules", "leaflet", "LICENSE"), join(dest, "LICENSE"));
console.log(`console: Leaflet copied to ${dest}`);
