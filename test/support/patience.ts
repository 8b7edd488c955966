// A timeout only bounds how long a failing test takes, never what passes: on a busy CI machine
// every wait gets SG6_TEST_PATIENCE (default 4) times the time its call site names.
export const PATIENCE = Number(process.env.SG6_TEST_PATIENCE ?? 4);
