#!/usr/bin/env node
'use strict';
require('../dist/src/cli/main.js').main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`peftkit: ${e && e.message ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
