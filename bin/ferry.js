#!/usr/bin/env -S node --max-semi-space-size=1
'use strict';
// A 1 MB semi-space (instead of up to 16 MB): the main thread allocates little once set up, and the
// young generation's pages are resident for the process's life. Given on the #! line because V8
// fixes the heap's layout before any script runs (node bin/ferry.js runs with Node's default).
require('../dist/src/backend/main.js').main(process.argv.slice(2));
