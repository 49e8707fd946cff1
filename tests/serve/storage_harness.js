// Runs the chat UI's script against in-memory stand-ins for the DOM and Web Storage.
"use strict";
const fs = require("fs");
const vm = require("vm");

class MemoryStorage {
  constructor(items) { this.items = new Map(Object.entries(items || {})); }
  getItem(key) { return this.items.has(key) ? this.items.get(key) : null; }
  setItem(key, value) { this.items.set(key, String(value)); }
  removeItem(key) { this.items.delete(key); }
  dump() { return Object.fromEntries(this.items); }
}

function stub() {  // anything the script touches that this test does not look at
  const fields = {};
  return new Proxy(function () {}, {
    get(target, key) {
      if (key in fields) return fields[key];
      if (key === Symbol.toPrimitive) return () => "";
      if (key === Symbol.iterator) return function* () {};
      if (key === "then") return undefined;
      return (fields[key] = stub());
    },
    set(target, key, value) { fields[key] = value; return true; },
    apply() { return stub(); },
  });
}

function element() {
  const el = stub();
  const on = {};
  el.value = "";
  el.addEventListener = (type, fn) => { (on[type] = on[type] || []).push(fn); };
  el.fire = (type) => { for (const fn of on[type] || []) fn({ type, target: el }); };
  return el;
}

const [script, seed] = process.argv.slice(2);
const elements = {};
const localStorage = new MemoryStorage(JSON.parse(seed));
const sessionStorage = new MemoryStorage();
const document = stub();
document.getElementById = (id) => (elements[id] = elements[id] || element());
document.createElement = () => element();
const window = { matchMedia: () => ({ matches: false }), addEventListener: () => {} };
const fetch = async () => ({ ok: true, json: async () => ({ data: [] }) });
const context = { document, window, localStorage, sessionStorage, fetch, setTimeout, clearTimeout, console,
                  Date, Math, JSON, Number, String, Object, Error, Promise };
vm.createContext(context);
vm.runInContext(fs.readFileSync(script, "utf8"), context);

const report = { keyShown: elements["api-key"].value };
elements["api-key"].value = "typed-key";
elements["api-key"].fire("input");
elements["temperature"].value = "0.7";
elements["temperature"].fire("input");  // saves the settings
report.local = localStorage.dump();
report.session = sessionStorage.dump();
process.stdout.write(JSON.stringify(report));
