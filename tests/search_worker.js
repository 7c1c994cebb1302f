// Run Material's own search worker (as built into a site) under node and query it.
// usage: node search_worker.js SITE_DIR WORD...  -> JSON {word: [result titles]}
// Queries go through the site's own search-ja.js, as the page sends them.
"use strict";
const fs = require("fs");
const path = require("path");
const vm = require("vm");

const site = process.argv[2];
const words = process.argv.slice(3);
const workers = path.join(site, "assets", "javascripts", "workers");
const worker = fs.readdirSync(workers).find((name) => /^search\..*\.js$/.test(name) && !name.endsWith(".map"));
const lunrDir = path.join(site, "assets", "javascripts", "lunr");
const { segmentQuery } = require(path.resolve(site, "assets", "javascripts", "search-ja.js"));

let listener = null;
const replies = [];
const context = {
  console,
  addEventListener: (type, handler) => { if (type === "message") listener = handler; },
  postMessage: (data) => replies.push(data),
  importScripts: (...urls) => {
    for (const url of urls) {
      const file = path.join(lunrDir, url.replace(/^\.\.\/lunr\//, ""));
      vm.runInContext(fs.readFileSync(file, "utf8"), context, { filename: file });
    }
    return Promise.resolve();
  },
};
context.self = context;
context.window = context;
vm.createContext(context);
vm.runInContext(fs.readFileSync(path.join(workers, worker), "utf8"), context);

const index = JSON.parse(fs.readFileSync(path.join(site, "search", "search_index.json"), "utf8"));
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

(async () => {
  listener({ data: { type: 0, data: { config: index.config, docs: index.docs, options: {} } } });
  for (let i = 0; i < 100 && replies.length === 0; i++) await settle();
  if (!replies.length || replies[0].type !== 1) throw new Error("search worker did not get ready");
  const found = {};
  for (const word of words) {
    replies.length = 0;
    listener({ data: { type: 2, data: segmentQuery(word) } });
    for (let i = 0; i < 100 && replies.length === 0; i++) await settle();
    const items = (replies[0] && replies[0].data.items) || [];
    found[word] = items.map((group) => group[0].title);
  }
  process.stdout.write(JSON.stringify(found));
})().catch((error) => { console.error(error.stack || String(error)); process.exit(1); });
