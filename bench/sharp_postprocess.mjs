// The original service's post-processing, written the straightforward way with sharp (libvips):
// decode the SD image, extract 4 parts, blur each part's inner edges, re-encode the parts as PNG,
// composite them, encode the final PNG (sharp's defaults). It is the baseline of bench target 1.
//
//   node bench/sharp_postprocess.mjs '{"files": ["a.png"], "repeats": 5, "warmup": 1, "band": 16, "sigma": 4, "out": "dir"}'
//
// Prints one JSON line: {"sharp": version, "results": [{"file", "times_ms": [...], "bytes"}]}.
// sharp is resolved from bench/.node (installed there by the benchmark: npm install --prefix bench/.node sharp).

import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { performance } from "node:perf_hooks";

const require = createRequire(join(import.meta.dirname, ".node", "package.json"));
const sharp = require("sharp");

async function postprocess(input, band, sigma) {
  const { width, height } = await sharp(input).metadata();
  const halfW = Math.floor(width / 2);
  const halfH = Math.floor(height / 2);
  const parts = [
    { left: 0, top: 0, width: halfW, height: halfH, inner: ["right", "bottom"] },
    { left: halfW, top: 0, width: width - halfW, height: halfH, inner: ["left", "bottom"] },
    { left: 0, top: halfH, width: halfW, height: height - halfH, inner: ["right", "top"] },
    { left: halfW, top: halfH, width: width - halfW, height: height - halfH, inner: ["left", "top"] },
  ];
  const encodedParts = [];
  for (const part of parts) {
    // Extract the part and re-encode it as PNG, as the original service handed parts around.
    const png = await sharp(input)
      .extract({ left: part.left, top: part.top, width: part.width, height: part.height })
      .png()
      .toBuffer();
    // Blur a band along each inner edge of the part and paste it back over the part.
    const overlays = [];
    for (const edge of part.inner) {
      const vertical = edge === "left" || edge === "right";
      const strip = vertical
        ? { left: edge === "left" ? 0 : part.width - band, top: 0, width: band, height: part.height }
        : { left: 0, top: edge === "top" ? 0 : part.height - band, width: part.width, height: band };
      const blurred = await sharp(png).extract(strip).blur(sigma).png().toBuffer();
      overlays.push({ input: blurred, left: strip.left, top: strip.top });
    }
    // (composite() adds an alpha channel; kept, as the straightforward code does: sharp writes RGBA.)
    const blurredPart = await sharp(png).composite(overlays).png().toBuffer();
    encodedParts.push({ input: blurredPart, left: part.left, top: part.top });
  }
  // Composite the four parts onto a canvas of the original size and encode the result.
  return sharp({ create: { width, height, channels: 3, background: { r: 0, g: 0, b: 0 } } })
    .composite(encodedParts)
    .png()
    .toBuffer();
}

const options = JSON.parse(process.argv[2]);
for (let i = 0; i < (options.warmup ?? 0); i++) {
  await postprocess(readFileSync(options.files[0]), options.band, options.sigma); // not timed
}
const results = [];
for (const file of options.files) {
  const times = [];
  let output = null;
  for (let i = 0; i < options.repeats; i++) {
    const started = performance.now();
    const input = readFileSync(file);
    output = await postprocess(input, options.band, options.sigma);
    writeFileSync(join(options.out, `sharp-${basename(file)}`), output);
    times.push(performance.now() - started);
  }
  results.push({ file, times_ms: times, bytes: output.length });
}
console.log(JSON.stringify({ sharp: sharp.versions.sharp, vips: sharp.versions.vips, results }));
