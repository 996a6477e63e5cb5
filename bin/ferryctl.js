#!/usr/bin/env node
'use strict';
require('../dist/src/backend/control/ferryctl.js').main(process.argv.slice(2));
