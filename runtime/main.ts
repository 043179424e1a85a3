// Placeholder until the server lands; replaced in the next commits.
import { loadConfig } from './config';
loadConfig();
