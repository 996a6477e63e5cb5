#!/usr/bin/env node
'use strict';
require('../dist/src/backend/main.js').main(process.argv.slice(2));
