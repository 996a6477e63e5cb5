// typescript-eslint with the project's rules, run by `npm test` (`npm run lint`).
// Type-aware rules catch what strict tsc does not: floating promises (a
// failure nobody awaits), misused promises in callbacks, `any` leaking in.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'build/**', '.cache/**', 'eslint.config.mjs', '.dependency-cruiser.js', 'bin/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports', disallowTypeAnnotations: false }],
      'no-console': 'error',
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'prefer-const': 'error',
    },
  },
  {
    // Every remaining eslint-disable must say why (after " -- ").
    files: ['**/*.ts'],
    plugins: {
      local: {
        rules: {
          'disable-needs-reason': {
            meta: { type: 'problem', schema: [], messages: { reason: 'eslint-disable needs a reason after " -- "' } },
            create(context) {
              return {
                Program() {
                  for (const comment of context.sourceCode.getAllComments()) {
                    const text = comment.value.trim();
                    if (/^eslint-disable/.test(text) && !/ -- \S/.test(text)) context.report({ loc: comment.loc, messageId: 'reason' });
                  }
                },
              };
            },
          },
        },
      },
    },
    rules: { 'local/disable-needs-reason': 'error' },
  },
  {
    // The few plain scripts (scripts/*.js) are CommonJS run by Node.
    files: ['**/*.js'],
    languageOptions: { sourceType: 'commonjs', globals: globals.node },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // Tests and benchmarks print their figures and progress.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: { 'no-console': 'off', '@typescript-eslint/no-unused-expressions': 'off' },
  },
);
