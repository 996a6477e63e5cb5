#!/usr/bin/env node
'use strict';
require('../dist/src/backend/cli.js').main(process.argv.slice(2));
