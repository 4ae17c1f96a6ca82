#!/usr/bin/env node
// Writes the README's training options table from the CLI's flag table (src/cli/flags.ts), between
// the `<!-- options:train -->` markers. `--check` only compares (exit 1 when they differ).
// Run `npm run docs:options` after changing a flag; test/cli_flags.test.ts fails while they differ.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const { readmeOptionsTable } = require(path.join(root, 'dist', 'src', 'cli', 'flags.js'));
const { resolveTrainOptions } = require(path.join(root, 'dist', 'src', 'train', 'options.js'));

const START = '<!-- options:train: generated from src/cli/flags.ts by `npm run docs:options` -->\n';
const END = '<!-- /options:train -->';

function expectedReadme(text) {
  const a = text.indexOf(START);
  const b = text.indexOf(END);
  if (a < 0 || b < a) throw new Error(`README.md: the markers ${START.trim()} ... ${END} are missing`);
  return text.slice(0, a + START.length) + readmeOptionsTable(resolveTrainOptions({ model: 'm', data: 'd', out: 'o' })) + text.slice(b);
}

module.exports = { expectedReadme };

if (require.main === module) {
  const file = path.join(root, 'README.md');
  const text = fs.readFileSync(file, 'utf8');
  const want = expectedReadme(text);
  if (process.argv.includes('--check')) {
    if (want !== text) {
      console.error('README.md: the options table differs from src/cli/flags.ts; run `npm run docs:options`');
      process.exit(1);
    }
  } else if (want !== text) {
    fs.writeFileSync(file, want);
    console.log('README.md: options table updated');
  }
}
