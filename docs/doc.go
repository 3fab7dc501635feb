// Package docs is the manual. It holds no code: its test checks that every
// link in README.md and docs/ resolves, to a file and to a heading.
package docs
