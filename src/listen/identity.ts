// Who a TLS peer is, and whether the identity allow-lists let it in
// (--tls-allow-cn/-dns/-uri for clients; --target-tls-allow-* for the far
// end at the client end). The data plane evaluates the same rule in C; this
// is its twin for the TypeScript relay, and the reference the differential
// tests hold the C side to. The rule, exactly:
//
//   - No list given: any certificate that verified is let in (as before the
//     lists existed).
//   - Otherwise a peer is let in when ANY CN pattern matches its subject CN,
//     OR any DNS pattern matches one of its SAN DNS names, OR any URI pattern
//     matches one of its SAN URIs. One match suffices; the lists are not
//     combined with "and".
//   - A CN or DNS pattern is a name, or "*." then a name. Matching ignores
//     ASCII case. "*" stands for exactly one whole leftmost label: one or
//     more characters, none of them a dot. So *.ops.example.org matches
//     a.ops.example.org, not ops.example.org, not a.b.ops.example.org, not
//     .ops.example.org (an empty label).
//   - The certificate's names are compared as written: a wildcard in the
//     certificate ("DNS:*.ops.example.org") is not expanded, it is the
//     literal label "*" (so only the pattern *.ops.example.org or the exact
//     name *.ops.example.org matches it).
//   - A URI pattern is exact and case-sensitive, or a prefix P ending in
//     "/*": it matches a URI that starts with P without its "*" (so with the
//     "/") and has at least one more character. spiffe://e.org/ns/prod/*
//     matches spiffe://e.org/ns/prod/sa/x, not spiffe://e.org/ns/prod/ nor
//     spiffe://e.org/ns/prod.
//   - The subject CN is the last CN of the subject when there are several
//     (the most specific one, as RFC 6125 advises); none: no CN to match.

import { spawnSync } from 'node:child_process';
import type tls from 'node:tls';
import { ConfigError } from '../errors';

/** The allow-lists, as the option table parsed them (namePattern, uriPattern). */
export interface IdentityRules {
  cn: string[];
  dns: string[];
  uri: string[];
}

/** The names of a certificate that the rules look at. */
export interface PeerIdentity {
  cn: string | undefined;
  dns: string[];
  uri: string[];
}

export function noRules(rules: IdentityRules): boolean {
  return rules.cn.length === 0 && rules.dns.length === 0 && rules.uri.length === 0;
}

/** ASCII-only lower case: what the C twin's strcasecmp does, whatever the locale. */
function asciiLower(s: string): string {
  return s.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
}

/** A CN or DNS pattern against one name (see the rule above). */
export function nameMatches(pattern: string, name: string): boolean {
  const p = asciiLower(pattern);
  const n = asciiLower(name);
  if (!p.startsWith('*.')) return p === n;
  const rest = p.slice(1); // ".ops.example.org"
  if (n.length <= rest.length || !n.endsWith(rest)) return false;
  return !n.slice(0, n.length - rest.length).includes('.');
}

/** A URI pattern against one URI (see the rule above). */
export function uriMatches(pattern: string, uri: string): boolean {
  if (!pattern.endsWith('/*')) return pattern === uri;
  const prefix = pattern.slice(0, -1); // keeps the "/"
  return uri.length > prefix.length && uri.startsWith(prefix);
}

export function identityAllowed(rules: IdentityRules, peer: PeerIdentity): boolean {
  if (noRules(rules)) return true;
  const { cn } = peer;
  if (cn !== undefined && rules.cn.some((p) => nameMatches(p, cn))) return true;
  if (peer.dns.some((name) => rules.dns.some((p) => nameMatches(p, name)))) return true;
  return peer.uri.some((uri) => rules.uri.some((p) => uriMatches(p, uri)));
}

/**
 * Node's subjectaltname string ("DNS:a.example, URI:spiffe://x, IP
 * Address:127.0.0.1") split into its entries. Node writes a value holding a
 * comma, a quote or a non-printable character as a JSON string
 * ('DNS:"a,b"'), so that a crafted name cannot pose as two: those are
 * decoded, never split.
 */
export function splitAltNames(san: string): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  let i = 0;
  while (i < san.length) {
    const colon = san.indexOf(':', i);
    if (colon < 0) break;
    const type = san.slice(i, colon);
    let value: string;
    let end: number;
    if (san[colon + 1] === '"') {
      // A JSON string: find its closing quote, skipping escaped characters.
      let j = colon + 2;
      while (j < san.length && san[j] !== '"') j += san[j] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(san.slice(colon + 1, j + 1)) as string;
      } catch {
        value = san.slice(colon + 2, j);
      }
      end = j + 1;
    } else {
      const comma = san.indexOf(', ', colon + 1);
      end = comma < 0 ? san.length : comma;
      value = san.slice(colon + 1, end);
    }
    out.push({ type, value });
    i = san.startsWith(', ', end) ? end + 2 : end + 1;
  }
  return out;
}

/** The names the rules look at, from Node's view of a certificate (getPeerCertificate()). */
export function identityOf(cert: tls.PeerCertificate): PeerIdentity {
  // Node gives an array when the subject has the attribute more than once.
  const raw = (cert.subject as { CN?: string | string[] } | undefined)?.CN;
  const cn = Array.isArray(raw) ? raw[raw.length - 1] : raw;
  const dns: string[] = [];
  const uri: string[] = [];
  for (const { type, value } of splitAltNames(cert.subjectaltname ?? '')) {
    if (type === 'DNS') dns.push(value);
    else if (type === 'URI') uri.push(value);
  }
  return { cn, dns, uri };
}

/** The SAN entries the rules look at, as one field: "DNS:a.example, URI:spiffe://x" ("" when none). */
export function describeSan(peer: PeerIdentity): string {
  return [...peer.dns.map((d) => `DNS:${d}`), ...peer.uri.map((u) => `URI:${u}`)].join(', ');
}

/** For logs: 'CN "a.ops.example.org", SAN DNS:a.ops.example.org, URI:spiffe://…', or what is missing. */
export function describeIdentity(peer: PeerIdentity): string {
  return describeNames(peer.cn, describeSan(peer));
}

/** The same from a CN and a SAN field as the data plane reports them. */
export function describeNames(cn: string | undefined, san: string | undefined): string {
  return `${cn === undefined ? 'no CN' : `CN ${JSON.stringify(cn)}`}, ${san ? `SAN ${san}` : 'no SAN DNS name or URI'}`;
}

/** Why a peer was refused, in words that follow its names: "matches none of --tls-allow-cn *.ops.example.org, …" (`prefix`: "--tls-allow" or "--target-tls-allow"). */
export function unmatched(rules: IdentityRules, prefix: string): string {
  const lists = (['cn', 'dns', 'uri'] as const).filter((k) => rules[k].length > 0).map((k) => `${prefix}-${k} ${rules[k].join(' ')}`);
  return `matches none of ${lists.join(', ')}`;
}

/**
 * --allow-uid and --allow-gid as numbers, for the data plane: a number as it
 * is, a name through getent(1) (so that NSS — LDAP, systemd's DynamicUser= —
 * answers as it does for everything else). An unknown name is a
 * ConfigError naming the option.
 */
export function resolveIds(names: readonly string[], database: 'passwd' | 'group'): number[] {
  const option = database === 'passwd' ? 'allow-uid' : 'allow-gid';
  const what = database === 'passwd' ? 'user' : 'group';
  return names.map((name) => {
    if (/^\d+$/.test(name)) {
      const n = Number(name);
      if (n > 0xffff_fffe) throw new ConfigError('ECONFIG_PRINCIPAL', `--${option} ${name}: not a ${what} id (at most 4294967294)`, option);
      return n;
    }
    const r = spawnSync('getent', [database, name], { encoding: 'utf8', timeout: 10_000 });
    const id = r.status === 0 ? Number(r.stdout.split('\n')[0]?.split(':')[2]) : NaN;
    if (Number.isInteger(id)) return id;
    // getent exits 2 for a name that is not there.
    const why = r.status === 2 ? `no ${what} "${name}" exists` : `cannot look up ${what} "${name}" (getent: ${r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : `exit ${r.status}`})`;
    throw new ConfigError('ECONFIG_PRINCIPAL', `--${option}: ${why} — create it, fix the name, or give a number`, option);
  });
}
