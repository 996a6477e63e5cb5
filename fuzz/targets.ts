/** The fuzz targets: module name under targets/ and whether its fuzz function is async. */
export interface FuzzTarget {
  name: string;
  async: boolean;
  /** Runs for the brief CI pass (the async server target is slower per input). */
  ciRuns: number;
}

export const FUZZ_TARGETS: readonly FuzzTarget[] = [
  { name: 'vhost-user-protocol', async: false, ciRuns: 20000 },
  { name: 'vhost-user-server', async: true, ciRuns: 3000 },
  { name: 'split-ring', async: false, ciRuns: 20000 },
  { name: 'stack-frame', async: false, ciRuns: 20000 },
  { name: 'l2-control', async: false, ciRuns: 20000 },
  { name: 'control-api', async: false, ciRuns: 20000 },
];
