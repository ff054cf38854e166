"""Onboarding clients: `wgslirp peer add|list|remove|show`.

A client added here is a record in the state directory's peers file (store), with an
address from the configured pool (pool) and a validated name (names); the router loads
the file at every start and reload (merge), a running router is told at once through its
wg(8) socket (live), and the client's wg-quick file can be shown as a QR code (qr). This
package is a client of the router: it never imports the runtime, only talks to it.
"""
