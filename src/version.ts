// The version, read once from package.json (shipped next to dist/ in the package).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const VERSION = (JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
